"""Pure parsing of etcd keys and values, and the instance table, without a server."""

from __future__ import annotations

import logging
import time

import orjson
import pytest

from msa_gateway.discovery.etcd import (
    InstanceTable,
    b64,
    normalize_prefix,
    parse_endpoints,
    parse_key,
    prefix_range_end,
    unb64,
)
from msa_gateway.errors import ConfigError

PREFIX = "/msa-gateway/services/"


def key(service: str, iid: str) -> bytes:
    return f"{PREFIX}{service}/{iid}".encode()


def value(**fields: object) -> bytes:
    return orjson.dumps(fields)


def test_base64_round_trip_and_range_end() -> None:
    assert unb64(b64("foo")) == b"foo"
    assert b64("foo") == "Zm9v"
    assert prefix_range_end(b"/a/") == b"/a0"
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"\xff\xff") == b"\0"


def test_parse_key_accepts_service_and_id() -> None:
    assert parse_key(f"{PREFIX}orders/orders-1", PREFIX) == ("orders", "orders-1")
    assert parse_key(f"{PREFIX}orders/10.0.0.5:8001", PREFIX) == ("orders", "10.0.0.5:8001")


@pytest.mark.parametrize(
    ("suffix", "reason"),
    [
        ("orders", "expected"),
        ("orders/", "expected"),
        ("orders/a/b", "or '/'"),
        ("health/x", "gateway endpoint"),
        ("bad name/x", "service names"),
        ("/x", "service names"),
    ],
)
def test_parse_key_rejects_bad_keys(suffix: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_key(PREFIX + suffix, PREFIX)


def test_parse_key_rejects_foreign_prefix() -> None:
    with pytest.raises(ValueError, match="outside"):
        parse_key("/other/orders/1", PREFIX)


def test_settings_helpers() -> None:
    assert parse_endpoints(" http://a:2379/, https://b:2379 ,") == ("http://a:2379", "https://b:2379")
    with pytest.raises(ConfigError, match="ETCD_ENDPOINTS"):
        parse_endpoints("a:2379")
    with pytest.raises(ConfigError, match="ETCD_ENDPOINTS"):
        parse_endpoints(" , ")
    assert normalize_prefix("/svc") == "/svc/"
    with pytest.raises(ConfigError, match="ETCD_PREFIX"):
        normalize_prefix("")


def test_table_put_change_delete() -> None:
    table = InstanceTable(PREFIX)
    assert table.put(key("orders", "b"), value(host="h", port=2))
    assert table.put(key("orders", "a"), value(host="h", port=1))
    assert not table.put(key("orders", "a"), value(host="h", port=1)), "same value is no change"
    snap = table.snapshot()
    assert [i.id for i in snap["orders"]] == ["a", "b"]
    assert table.put(key("orders", "a"), value(host="h", port=1, weight=4))
    assert table.snapshot()["orders"][0].weight == 4
    assert snap["orders"][0].weight == 1, "an earlier snapshot is never mutated"
    assert table.delete(key("orders", "a"))
    assert table.delete(key("orders", "b"))
    assert not table.delete(key("orders", "b"))
    assert table.snapshot() == {}


def test_table_skips_bad_data_with_a_warning_naming_the_key(caplog: pytest.LogCaptureFixture) -> None:
    table = InstanceTable(PREFIX)
    table.put(key("orders", "good"), value(host="h", port=1))
    table.put(key("orders", "was-good"), value(host="h", port=2))
    caplog.set_level(logging.WARNING, logger="msa_gateway.discovery.etcd")
    bad = {
        key("orders", "json"): b"{oops",
        key("orders", "noport"): value(host="h"),
        key("orders", "range"): value(host="h", port=65536),
        f"{PREFIX}orders".encode(): value(host="h", port=1),
        key("orders", "was-good"): b"garbage",
        b"\xff\xfe": value(host="h", port=1),
    }
    for k, v in bad.items():
        table.put(k, v)
    assert [i.id for i in table.snapshot()["orders"]] == ["good"], "bad data never replaces good data"
    text = caplog.text
    for k in bad:
        assert (k.decode() if k != b"\xff\xfe" else repr(k)) in text


def test_snapshot_of_50_services_x_20_instances_is_whole_and_a_change_costs_less_than_a_rebuild() -> None:
    entries = [
        (key(f"svc{s}", f"i{i}"), value(host=f"10.0.{s}.{i}", port=8000 + i, metadata={"zone": "a"}))
        for s in range(50)
        for i in range(20)
    ]
    start = time.perf_counter()
    table = InstanceTable(PREFIX)
    for k, v in entries:
        table.put(k, v)
    snap = table.snapshot()
    full = time.perf_counter() - start
    start = time.perf_counter()
    table.put(key("svc7", "i3"), value(host="10.9.9.9", port=1))
    table.snapshot()
    incremental = time.perf_counter() - start
    assert sum(len(v) for v in snap.values()) == 1000
    print(
        f"etcd table: 1000 instances parsed+built in {full * 1000:.2f} ms;",
        f"one change {incremental * 1000:.3f} ms",
    )
    assert full < 1.0  # a few ms on a quiet machine (printed); this only catches a blow-up
    assert incremental < full
