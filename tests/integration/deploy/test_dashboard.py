"""deploy/grafana/msa-gateway.json: importable, valid PromQL, and only metrics a real gateway exports.

A gateway process serves traffic that retries, ejects, refuses a retry, is rate limited and
hits an unknown service; its /metrics is then the list of names every dashboard panel and alert rule may use.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.support.backend import running_backends
from tests.support.gateway import gateway_process, service_yaml
from tests.support.procs import free_port
from tests.support.promql import (
    dashboard_queries,
    exported_names,
    load_dashboard,
    metric_names,
    promtool_check,
    rule_queries,
    unknown_metrics,
)


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


@pytest.fixture(scope="module")
def exposition() -> Iterator[str]:
    """Return the /metrics text of a gateway process after traffic of every kind the panels show."""
    dead = free_port()  # nothing listens: connect refused
    with running_backends("a", "b") as (a, b):
        b.control(mode="error500")
        config = service_yaml({"api": [dead, a.port]}, outlier={"consecutive_failures": 1})
        config["services"].update(
            service_yaml({"flaky": [b.port]}, retry={"retry_on_status": [500], "max_retries": 0})["services"]
        )
        limited = {"rate_limit": {"key": "ip", "limits": ["1/minute"]}}
        config["services"].update(service_yaml({"limited": [a.port]}, policies=limited)["services"])
        with gateway_process(config) as gw:
            statuses = [_get(f"{gw.url}/api/items") for _ in range(4)]
            statuses += [_get(f"{gw.url}/flaky/items"), _get(f"{gw.url}/nope/items")]
            statuses += [_get(f"{gw.url}/limited/items") for _ in range(2)]
            assert statuses == [200, 200, 200, 200, 500, 404, 200, 429]
            with urllib.request.urlopen(f"{gw.url}/metrics", timeout=10) as resp:
                yield resp.read().decode()


def test_the_traffic_filled_the_series_the_panels_are_about(exposition: str) -> None:
    exported = exported_names(exposition)
    for name in (
        "gateway_requests_total",
        "gateway_request_duration_seconds_bucket",
        "gateway_upstream_errors_total",
        "gateway_retries_total",
        "gateway_retries_refused_total",
        "gateway_instance_ejections_total",
        "gateway_instance_up",
        "gateway_discovery_up",
        "gateway_task_crashes_total",
        "gateway_ratelimit_decisions_total",
    ):
        assert f"\n{name}{{" in exposition, f"{name}: no sample after the traffic"
        assert name in exported


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    dashboard = load_dashboard()
    assert dashboard["__inputs"] == [
        {
            "name": "DS_PROMETHEUS",
            "label": "Prometheus",
            "description": "The Prometheus that scrapes the gateway's /metrics",
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }
    ]
    assert dashboard["schemaVersion"] >= 39 and dashboard["uid"] and dashboard["id"] is None
    (variable,) = dashboard["templating"]["list"]
    assert variable["name"] == "service" and variable["definition"].startswith("label_values(")
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]


def test_every_dashboard_expression_parses_in_prometheus() -> None:
    result = promtool_check(dashboard_queries(load_dashboard()))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_names_only_metrics_the_gateway_exports(exposition: str) -> None:
    queries = dashboard_queries(load_dashboard())
    assert len(queries) >= 20
    assert unknown_metrics(queries, exported_names(exposition)) == {}


def test_alert_rules_name_only_metrics_the_gateway_exports(exposition: str) -> None:
    assert unknown_metrics(rule_queries(), exported_names(exposition)) == {}


def test_a_panel_naming_a_missing_metric_is_reported(exposition: str) -> None:
    dashboard = load_dashboard()
    dashboard["panels"].append(
        {
            "title": "typo",
            "targets": [
                {
                    "refId": "A",
                    "expr": 'sum(rate(gateway_request_total{service=~"$service"}[$__rate_interval]))',
                }
            ],
        }
    )
    missing = unknown_metrics(dashboard_queries(dashboard), exported_names(exposition))
    assert missing == {"panel 'typo' target A": {"gateway_request_total"}}


def test_panels_cover_the_issue_list() -> None:
    used = set().union(*(metric_names(q) for q in dashboard_queries(load_dashboard()).values()))
    assert {
        "gateway_requests_total",
        "gateway_request_duration_seconds_bucket",
        "gateway_upstream_errors_total",
        "gateway_service_healthy_instances",
        "gateway_service_instances",
        "gateway_instance_ejections_total",
        "gateway_retries_total",
        "gateway_retries_refused_total",
        "gateway_overflow_total",
        "gateway_service_panic",
        "gateway_discovery_up",
        "gateway_task_crashes_total",
        "gateway_requests_in_flight",
        "gateway_ratelimit_decisions_total",
        "gateway_ratelimit_backend_up",
        "gateway_config_reloads_total",
    } <= used
