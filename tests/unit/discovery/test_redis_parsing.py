"""Pure parsing of what the Redis provider reads: instance JSON, legacy values, whole snapshots."""

from __future__ import annotations

import math

import orjson
import pytest

from msa_gateway.discovery.redis import RawService, build_snapshot, parse_legacy, parse_read
from msa_gateway.discovery.redis_registry import ttl_ms
from msa_gateway.model import Instance

NOW = 1_700_000_000_000


def doc(**fields: object) -> bytes:
    base: dict[str, object] = {"host": "10.0.0.5", "port": 8001}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


def test_parse_legacy_reads_host_port_including_ipv6() -> None:
    expected = Instance(id="x", host="127.0.0.1", port=9001, source="redis")
    assert parse_legacy("x", "127.0.0.1:9001") == expected
    assert parse_legacy("y", "[::1]:9002").host == "::1"


@pytest.mark.parametrize(
    "raw", ["127.0.0.1", "127.0.0.1:", "host:port", "h:70000", ":80", "a b:80", "\ufffd:80"]
)
def test_parse_legacy_rejects_values_that_are_not_host_port(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_legacy("x", raw)


def raw_service(name: str, entries: dict[str, tuple[bytes, float]]) -> RawService:
    return RawService(
        name, {k: v.decode() for k, (v, _) in entries.items()}, [(k, s) for k, (_, s) in entries.items()]
    )


def test_build_snapshot_keeps_live_instances_sorted_and_reports_next_expiry() -> None:
    svc = raw_service(
        "users",
        {
            "b": (doc(port=2), NOW + 3000),
            "a": (doc(port=1), NOW + 1500),
            "c": (doc(port=3), math.inf),
            "dead": (doc(port=4), NOW),  # expiry == now counts as expired
        },
    )
    reading = build_snapshot(NOW, [svc])
    assert [i.id for i in reading.snapshot["users"]] == ["a", "b", "c"]
    assert reading.next_expiry_ms == NOW + 1500
    assert reading.problems == ()


def test_build_snapshot_omits_services_without_live_instances() -> None:
    svc = raw_service("gone", {"a": (doc(), NOW - 1)})
    reading = build_snapshot(NOW, [svc])
    assert reading.snapshot == {}
    assert reading.next_expiry_ms is None


def test_build_snapshot_skips_bad_entries_and_names_the_key() -> None:
    good = raw_service(
        "users",
        {
            "ok": (doc(), NOW + 1000),
            "broken": (b"{", NOW + 1000),
            "noport": (doc(port=...), NOW + 1000),
            "big": (doc(port=99999), NOW + 1000),
            "bad id": (doc(), NOW + 1000),
        },
    )
    orphan = RawService("users2", {"x": doc().decode()}, [])
    bad_name = raw_service("health", {"a": (doc(), NOW + 1000)})
    reading = build_snapshot(NOW, [good, orphan, bad_name])
    assert list(reading.snapshot) == ["users"]
    assert [i.id for i in reading.snapshot["users"]] == ["ok"]
    text = "\n".join(reading.problems)
    assert "msa-gateway:service:users:instances field 'broken': malformed JSON" in text
    assert "msa-gateway:service:users:instances field 'noport': port: missing" in text
    assert (
        "msa-gateway:service:users:instances field 'big': port: must be an integer 1-65535, not 99999" in text
    )
    assert "msa-gateway:service:users:instances field 'bad id': instance id" in text
    assert "msa-gateway:service:users2:instances field 'x': no expiry entry" in text
    assert "msa-gateway:services member 'health'" in text
    assert len(reading.problems) == 6


def test_build_snapshot_merges_legacy_hashes_and_current_layout_wins() -> None:
    svc = raw_service("users", {"a": (doc(port=1), math.inf)})
    legacy = {
        "service:users": {"a": "10.0.0.9:9", "b": "10.0.0.9:10"},
        "service:orders": {"o1": "127.0.0.1:7000", "bad": "nope"},
        "service:bad/name": {"x": "127.0.0.1:1"},
    }
    reading = build_snapshot(NOW, [svc], legacy)
    assert [(i.id, i.port) for i in reading.snapshot["users"]] == [("a", 1), ("b", 10)]
    assert reading.snapshot["orders"] == (Instance(id="o1", host="127.0.0.1", port=7000, source="redis"),)
    text = "\n".join(reading.problems)
    assert "service:users field 'a': shadowed" in text
    assert "service:orders field 'bad'" in text
    assert "service:bad/name:" in text


def test_parse_read_decodes_the_script_answer() -> None:
    payload = orjson.dumps(
        [
            str(NOW),
            [
                [
                    "users",
                    ["a", doc(port=1).decode(), "b", doc(port=2).decode()],
                    ["a", "inf", "b", str(NOW + 5)],
                ],
                ["empty", {}, {}],
                ["typo", False, {}],
            ],
            [["service:old", ["x", "127.0.0.1:9"]], ["service:gone", {}]],
        ]
    )
    reading = parse_read(payload)
    assert reading.now_ms == NOW
    assert [i.port for i in reading.snapshot["users"]] == [1, 2]
    assert reading.snapshot["old"][0].port == 9
    assert set(reading.snapshot) == {"users", "old"}
    assert reading.next_expiry_ms == NOW + 5
    assert reading.problems == ("msa-gateway:service:typo:instances: wrong type (want a hash and a zset)",)


def test_parse_read_survives_invalid_utf8() -> None:
    payload = b'["1", [["users", ["a", "{\\"host\\": \\"h\xff\\", \\"port\\": 1}"], ["a", "inf"]]], []]'
    reading = parse_read(payload)
    assert reading.snapshot == {}
    assert "not a bare host" in reading.problems[0]


def test_ttl_ms_converts_seconds_and_maps_infinity_to_never() -> None:
    assert ttl_ms(1.5) == 1500
    assert ttl_ms(math.inf) == 0
    for bad in (0.0, -1.0, math.nan, 10**9):
        with pytest.raises(ValueError):
            ttl_ms(bad)


def test_parse_read_keeps_the_fingerprint_of_the_original_layout() -> None:
    payload = b'["1", [], [["service:old", ["a", "127.0.0.1:1"]]], [7, "f00d"]]'
    reading = parse_read(payload)
    assert reading.fingerprint == (7, "f00d")
    assert [i.id for i in reading.snapshot["old"]] == ["a"]
    assert parse_read(b'["1", [], []]').fingerprint is None
