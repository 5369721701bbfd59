"""The example registries, the Dockerfile and the compose file agree with the code and with each other.

No Docker engine runs here, so these checks read the files: they catch a renamed module, a port moved in
one place only, a registry that no longer validates, or a file the image copies that does not exist.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from msa_gateway.settings import load_config
from tests.support.procs import REPO
from tests.support.seed import SEED_BASE, curl_commands, seed_text

EXAMPLES = REPO / "examples"


def compose() -> dict[str, Any]:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def instances(path: str | None) -> dict[str, list[tuple[str, int]]]:
    cfg = load_config(path)
    return {name: [(i.host, i.port) for i in svc.instances] for name, svc in cfg.services.items()}


def test_demo_registry_validates_and_matches_the_embedded_default() -> None:
    demo, embedded = load_config(str(EXAMPLES / "gateway.yaml")), load_config(None)
    assert instances(str(EXAMPLES / "gateway.yaml")) == instances(None)
    assert demo.defaults == embedded.defaults
    for name, svc in demo.services.items():
        assert svc.options == embedded.services[name].options


def test_demo_registry_names_the_instances_like_run_demo_does() -> None:
    from examples.run_demo import demo_services

    cfg = load_config(str(EXAMPLES / "gateway.yaml"))
    registered = {(i.id, i.host, i.port) for svc in cfg.services.values() for i in svc.instances}
    started = {(c.name, c.host, c.port) for c in demo_services("python")}
    assert registered == started


def test_compose_registry_points_at_the_compose_services_and_their_ports() -> None:
    services = compose()["services"]
    for name, hosts in instances(str(EXAMPLES / "gateway.compose.yaml")).items():
        assert len(hosts) == 2
        module = "examples." + name.replace("-", "_")
        for host, port in hosts:
            assert host in services, f"{host} is not a compose service"
            svc = services[host]
            assert svc["command"][:3] == ["python", "-m", module]
            assert svc["environment"]["PORT"] == str(port)
            assert svc["environment"]["HOST"] == "0.0.0.0"


def test_compose_gateway_uses_the_compose_registry_and_shows_discovery_settings() -> None:
    services = compose()["services"]
    gw = services["gateway"]
    env = gw["environment"]
    assert env["GATEWAY_CONFIG"] == "/app/examples/gateway.compose.yaml"
    assert (EXAMPLES / "gateway.compose.yaml").is_file()
    assert env["SERVICE_DISCOVERY_TYPE"] == "static"
    assert (env["REDIS_HOST"], env["CONSUL_HOST"]) == ("redis", "consul")
    assert {"redis", "consul"} <= set(services)
    assert "8000:8000" in gw["ports"]
    assert all(
        "build" in services[n] for n in services if services[n].get("image", "").startswith("msa-gateway")
    )


def test_dockerfile_is_slim_non_root_with_a_curl_free_healthcheck() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and user[-1] not in {"root", "0"}
    health = re.search(r"^HEALTHCHECK .*?CMD (.+?)$", text.replace("\\\n", " "), re.M)
    assert health and "curl" not in health.group(1) and "urllib.request" in health.group(1)
    assert "/health/live" in health.group(1)
    assert re.search(r"^EXPOSE 8000$", text, re.M)
    assert re.search(r'^CMD \["msa-gateway", "run"\]$', text, re.M)


def test_every_file_the_dockerfile_copies_exists_and_is_not_dockerignored() -> None:
    text = (REPO / "Dockerfile").read_text()
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    copies = [line for line in re.findall(r"^COPY (.+)$", text, re.M) if not line.startswith("--from=")]
    sources = [src for line in copies for src in line.split()[:-1]]
    assert sources
    for src in sources:
        assert (REPO / src).exists(), f"Dockerfile copies {src}, which is missing"
        assert Path(src).parts[0] not in ignored, f"Dockerfile copies {src}, which .dockerignore excludes"


def test_the_seeds_curl_examples_appear_verbatim_in_both_readmes_and_in_run_demos_hint() -> None:
    from examples.run_demo import usage

    seed = [c.argv for c in curl_commands(seed_text())]
    assert len(seed) == 8
    for readme in (REPO / "README.md", EXAMPLES / "README.md"):
        documented = {c.argv for c in curl_commands(readme.read_text())}
        assert [argv for argv in seed if argv not in documented] == [], readme
    printed = [tuple(shlex.split(line)) for line in usage(SEED_BASE).splitlines()]
    assert printed == seed
