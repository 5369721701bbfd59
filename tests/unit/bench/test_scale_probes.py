"""The scale scenario's pure parts: the config it builds and how it reads the gateway's log."""

from __future__ import annotations

import json

from bench.scale_probes import LOAD_SERVICE, build_config, health_events, lag_share, metric


def test_the_config_spreads_the_instances_over_the_ports_and_keeps_the_load_service_apart() -> None:
    config = build_config(1000, [1, 2, 3], 7, 5.0, 2.0, [8, 9])
    services = config["services"]
    probed = [i for name, s in services.items() if name != LOAD_SERVICE for i in s["instances"]]
    assert len(probed) == 1000
    assert len({(s, i["id"]) for s, svc in services.items() for i in svc["instances"]}) == 1002
    assert {i["port"] for i in probed} == {1, 2, 3}
    assert [i["port"] for i in services[LOAD_SERVICE]["instances"]] == [8, 9]
    assert config["defaults"]["health_check"] == {"path": "/health", "interval": 5.0, "timeout": 2.0}
    assert build_config(10, [1], 1, 0.0, 2.0, [8])["defaults"]["health_check"]["path"] is None


def test_health_events_count_flips_stretches_and_lag_reports() -> None:
    lines = [
        json.dumps({"event": "instance health changed", "to": "unhealthy"}),
        json.dumps({"event": "instance health changed", "to": "healthy"}),
        json.dumps({"event": "health probes slowed down to spare the gateway"}),
        json.dumps({"event": "health probe timeouts not counted: the gateway itself was late", "probes": 7}),
        "not json",
    ]
    events = health_events(lines)
    assert events["to_unhealthy"] == 1
    assert events["slowed"] == 1
    assert events["not_counted"] == 7


def test_metric_reads_one_sample() -> None:
    text = 'gateway_health_probes_total{result="ok"} 12.0\ngateway_health_probe_interval_stretch 1.5\n'
    assert metric(text, "gateway_health_probes_total", 'result="ok"') == 12.0
    assert metric(text, "gateway_health_probe_interval_stretch") == 1.5
    assert metric(text, "missing") == 0.0


def test_lag_share_is_the_share_of_samples_over_the_bound_between_two_scrapes() -> None:
    name = "gateway_event_loop_lag_seconds"
    before = f'{name}_bucket{{le="0.025"}} 90.0\n{name}_count 100.0\n'
    after = f'{name}_bucket{{le="0.025"}} 180.0\n{name}_count 200.0\n'
    assert lag_share(before, after, "0.025") == 0.1
