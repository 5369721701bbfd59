"""Pure parsing of Consul answers: no sockets, shapes as in the "Health HTTP API" docs."""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import orjson
import pytest

from msa_gateway.discovery.consul import (
    ConsulProvider,
    aggregate_status,
    format_wait,
    next_index,
    parse_entry,
    parse_health,
    parse_service_names,
    read_timeout,
)
from msa_gateway.errors import DiscoveryError
from msa_gateway.settings import GatewayConfig, Settings

# The sample response of "List Service Instances for Service" in Consul's Health HTTP API page.
DOC_ENTRY: dict[str, Any] = {
    "Node": {
        "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
        "Node": "foobar",
        "Address": "10.1.10.12",
        "Datacenter": "dc1",
        "TaggedAddresses": {"lan": "10.1.10.12", "wan": "10.1.10.12"},
        "Meta": {"instance_type": "t2.medium"},
    },
    "Service": {
        "ID": "redis",
        "Service": "redis",
        "Tags": ["primary"],
        "Address": "10.1.10.12",
        "TaggedAddresses": {
            "lan": {"address": "10.1.10.12", "port": 8000},
            "wan": {"address": "198.18.1.2", "port": 80},
        },
        "Meta": {"redis_version": "4.0"},
        "Port": 8000,
        "Weights": {"Passing": 10, "Warning": 1},
        "Namespace": "default",
    },
    "Checks": [
        {
            "Node": "foobar",
            "CheckID": "service:redis",
            "Name": "Service 'redis' check",
            "Status": "passing",
            "ServiceID": "redis",
            "ServiceName": "redis",
        },
        {"Node": "foobar", "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing"},
    ],
}


def entry(**service: Any) -> dict[str, Any]:
    """Return the documented entry with ``Service`` fields overridden (None deletes a field)."""
    e = copy.deepcopy(DOC_ENTRY)
    for k, v in service.items():
        if v is None:
            e["Service"].pop(k, None)
        else:
            e["Service"][k] = v
    return e


def with_status(e: dict[str, Any], status: str) -> dict[str, Any]:
    e["Checks"][0]["Status"] = status
    return e


def test_documented_sample_becomes_an_instance() -> None:
    inst = parse_entry("redis", DOC_ENTRY, allow_warning=False)
    assert inst is not None
    assert (inst.id, inst.host, inst.port, inst.weight, inst.source) == (
        "redis",
        "10.1.10.12",
        8000,
        10,
        "consul",
    )
    assert inst.metadata == (("redis_version", "4.0"), ("tags", "primary"))


def test_empty_service_address_falls_back_to_node_address() -> None:
    e = entry(Address="")
    e["Node"]["Address"] = "10.9.9.9"
    inst = parse_entry("redis", e, allow_warning=False)
    assert inst is not None and inst.host == "10.9.9.9"


def test_service_address_wins_over_node_address() -> None:
    e = entry(Address="172.17.0.3")
    inst = parse_entry("redis", e, allow_warning=False)
    assert inst is not None and inst.host == "172.17.0.3"


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        (["passing", "passing"], "passing"),
        (["passing", "warning"], "warning"),
        (["warning", "critical"], "critical"),
        (["passing", "maintenance"], "critical"),
        ([], "passing"),
    ],
)
def test_aggregate_status_worst_wins(statuses: list[str], expected: str) -> None:
    assert aggregate_status([{"Status": s} for s in statuses]) == expected


def test_critical_instance_is_never_eligible() -> None:
    e = with_status(entry(), "critical")
    assert parse_entry("redis", e, allow_warning=True) is None


def test_node_check_failing_makes_instance_ineligible() -> None:
    e = entry()
    e["Checks"][1]["Status"] = "critical"
    assert parse_entry("redis", e, allow_warning=True) is None


def test_warning_instance_only_when_allowed_and_weighted_by_warning_weight() -> None:
    e = with_status(entry(Weights={"Passing": 10, "Warning": 3}), "warning")
    assert parse_entry("redis", e, allow_warning=False) is None
    inst = parse_entry("redis", e, allow_warning=True)
    assert inst is not None and inst.weight == 3


def test_warning_weight_zero_means_no_traffic() -> None:
    e = with_status(entry(Weights={"Passing": 10, "Warning": 0}), "warning")
    assert parse_entry("redis", e, allow_warning=True) is None


def test_missing_weights_default_to_one_and_big_weights_are_capped() -> None:
    one = parse_entry("redis", entry(Weights=None), allow_warning=False)
    big = parse_entry("redis", entry(Weights={"Passing": 10**6, "Warning": 1}), allow_warning=False)
    assert one is not None and one.weight == 1
    assert big is not None and big.weight == 1000


def test_health_path_comes_from_meta() -> None:
    inst = parse_entry("redis", entry(Meta={"health_path": "/ready"}), allow_warning=False)
    bad = parse_entry("redis", entry(Meta={"health_path": "ready"}), allow_warning=False)
    assert inst is not None and inst.health_path == "/ready"
    assert bad is not None and bad.health_path is None


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("Port", 0, "missing port"),
        ("Port", None, "missing port"),
        ("Port", 70000, "port 70000 out of range"),
        ("Port", -1, "port -1 out of range"),
        ("Port", "8000", "is not an integer"),
        ("ID", "", "missing Service.ID"),
    ],
)
def test_bad_entries_are_skipped_with_a_warning_naming_service_and_id(
    field: str, value: Any, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = entry(ID="redis-2")
    with caplog.at_level(logging.WARNING, logger="msa_gateway.discovery.consul"):
        got = parse_health("redis", [entry(**{field: value}), good], allow_warning=False)
    assert [i.id for i in got] == ["redis-2"]
    [record] = caplog.records
    message = record.getMessage()
    assert reason in message and "of service 'redis'" in message
    if field != "ID":
        assert "instance 'redis' " in message


def test_no_address_anywhere_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    e = entry(Address="")
    e["Node"]["Address"] = ""
    with caplog.at_level(logging.WARNING):
        assert parse_entry("redis", e, allow_warning=False) is None
    assert "Node.Address" in caplog.text


def test_warning_logged_once_per_run(caplog: pytest.LogCaptureFixture) -> None:
    seen: set[tuple[str, str, str]] = set()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            parse_health("redis", [entry(Port=0)], allow_warning=False, seen=seen)
    assert len(caplog.records) == 1


def test_duplicate_service_ids_on_two_nodes_are_qualified_by_node() -> None:
    a, b = entry(), entry(Address="10.1.10.13")
    b["Node"]["Node"] = "other"
    ids = [i.id for i in parse_health("redis", [a, b], allow_warning=False)]
    assert ids == ["other/redis", "redis"]


def test_parse_health_sorts_and_rejects_non_lists() -> None:
    got = parse_health("redis", [entry(ID="b"), entry(ID="a")], allow_warning=False)
    assert [i.id for i in got] == ["a", "b"]
    with pytest.raises(DiscoveryError):
        parse_health("redis", {"not": "a list"}, allow_warning=False)


def test_service_names_skip_consul_itself() -> None:
    doc = {"consul": [], "redis": [], "postgresql": ["primary", "secondary"]}
    assert parse_service_names(doc) == {"redis", "postgresql"}
    with pytest.raises(DiscoveryError):
        parse_service_names(["redis"])


@pytest.mark.parametrize(
    ("previous", "returned", "expected"),
    [
        (0, 42, 42),  # first answer
        (42, 42, 42),  # timeout, nothing changed
        (42, 50, 50),  # change
        (50, 7, 0),  # went backwards: reset, next read does not block
        (0, 7, 7),  # after the reset
        (0, 0, 1),  # a zero index must never make the next request non-blocking
        (42, 0, 1),  # ... not even when it is also lower than the previous one
        (1, 0, 1),  # blocking on 1 and answered 0 (the bug): keep blocking on 1, no busy loop
    ],
)
def test_next_index_follows_the_blocking_query_rules(previous: int, returned: int, expected: int) -> None:
    assert next_index(previous, returned) == expected


def test_read_timeout_exceeds_wait_plus_consul_jitter() -> None:
    for wait in (1.0, 30.0, 55.0, 300.0, 600.0):
        assert read_timeout(wait, 0.5) > wait + wait / 16


def test_wait_is_sent_as_a_go_duration() -> None:
    assert format_wait(30) == "30s"
    assert format_wait(0.5) == "500ms"
    assert format_wait(1.25) == "1250ms"


def test_provider_from_settings_reads_consul_settings() -> None:
    s = Settings(
        consul_host="consul.internal",
        consul_port=8501,
        consul_scheme="https",
        consul_token="secret",
        consul_datacenter="dc2",
    )
    p = ConsulProvider.from_settings(s, GatewayConfig(source="test"))
    assert (p.base_url, p.token, p.datacenter, p.allow_warning) == (
        "https://consul.internal:8501",
        "secret",
        "dc2",
        False,
    )
    assert p.name == "consul"
    with pytest.raises(ValueError, match="wait"):
        ConsulProvider(wait=601)


def test_parsing_1000_instances_is_whole_and_not_quadratic() -> None:
    """50 services x 20 instances, from JSON bytes as Consul sends them to parsed tuples."""
    bodies = {
        f"svc-{s}": orjson.dumps([entry(ID=f"svc-{s}-{i}", Port=10000 + i) for i in range(20)])
        for s in range(50)
    }
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        snapshot = {n: parse_health(n, orjson.loads(b), allow_warning=False) for n, b in bodies.items()}
        best = min(best, time.perf_counter() - t0)
    assert sum(len(v) for v in snapshot.values()) == 1000
    print(f"\nconsul parse 50x20 from JSON: {best * 1000:.2f} ms")
    assert best < 0.5  # a few ms on a quiet machine (printed); this only catches a blow-up
