"""``deploy/k8s``: the kustomize base is valid against the Kubernetes schemas (offline) and says what it must.

``kubernetes-validate`` ships the schemas, so nothing is fetched. The base has no generators or
patches, so rendering it is reading the files ``kustomization.yaml`` lists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from msa_gateway.settings import Settings, parse_config

BASE = Path(__file__).resolve().parents[3] / "deploy" / "k8s"
KUBERNETES = "1.30"
LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
}


def rendered() -> dict[str, dict[str, Any]]:
    """Return every resource of the base by kind."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert set(kustomization) == {"apiVersion", "kind", "resources"}, (
        "only plain resources: nothing to render"
    )
    out = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((BASE / name).read_text()):
            out[doc["kind"]] = doc
    return out


RESOURCES = rendered()


@pytest.mark.parametrize("kind", sorted(RESOURCES))
def test_every_resource_is_valid_against_the_strict_schema(kind: str) -> None:
    kubernetes_validate.validate(RESOURCES[kind], KUBERNETES, strict=True)
    assert set(RESOURCES[kind]["metadata"]["labels"]) == LABELS


def test_the_base_has_what_the_issue_lists() -> None:
    assert set(RESOURCES) == {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }


def container() -> dict[str, Any]:
    (c,) = RESOURCES["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert isinstance(c, dict)
    return c


def env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in container()["env"]}


def test_probes_drain_and_grace_period_fit_together() -> None:
    pod = RESOURCES["Deployment"]["spec"]["template"]["spec"]
    c = container()
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    pause = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    drain = float(env()["DRAIN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] > pause + drain


def test_runs_as_non_root_on_a_read_only_root_filesystem_with_requests_and_limits() -> None:
    pod = RESOURCES["Deployment"]["spec"]["template"]["spec"]
    c = container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/tmp"}  # the supervisor's socket directory
    assert set(c["resources"]["requests"]) == set(c["resources"]["limits"]) == {"cpu", "memory"}
    assert int(env()["WORKERS"]) == int(c["resources"]["limits"]["cpu"])  # one worker per core of the limit


def test_selectors_match_the_pods_and_the_hpa_targets_the_deployment() -> None:
    pod_labels = RESOURCES["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selectors = [
        RESOURCES["Deployment"]["spec"]["selector"]["matchLabels"],
        RESOURCES["Service"]["spec"]["selector"],
        RESOURCES["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector.items() <= pod_labels.items()
    target = RESOURCES["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", RESOURCES["Deployment"]["metadata"]["name"])
    assert RESOURCES["Service"]["spec"]["ports"][0]["targetPort"] == container()["ports"][0]["name"]


def test_the_configmap_is_a_valid_gateway_config_and_the_env_valid_settings() -> None:
    text = RESOURCES["ConfigMap"]["data"]["gateway.yaml"]
    config = parse_config(yaml.safe_load(text), "deploy/k8s/configmap.yaml")
    assert set(config.services) == {"user-service", "order-service"}
    mount = next(m for m in container()["volumeMounts"] if m["name"] == "config")["mountPath"]
    assert env()["GATEWAY_CONFIG"] == f"{mount}/gateway.yaml"
    values: dict[str, Any] = {k.lower(): v for k, v in env().items()}
    settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    assert settings.workers == 2
