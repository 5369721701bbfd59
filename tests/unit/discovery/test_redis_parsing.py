"""Pure parsing of what the Redis provider reads, and its view updated one service at a time."""

from __future__ import annotations

import logging
import math

import orjson
import pytest

from msa_gateway.discovery.redis import parse_answer, parse_event
from msa_gateway.discovery.redis_registry import ttl_ms
from msa_gateway.discovery.redis_view import RedisView, ServiceRead, parse_legacy
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


def content(name: str, entries: dict[str, tuple[bytes, float]], digest: str = "d1") -> ServiceRead:
    """A row with content, as READ_LUA sends it when the digest differs."""
    live = [s for _, s in entries.values() if s > NOW]
    finite = [s for s in live if math.isfinite(s)]
    return ServiceRead(
        name,
        digest,
        min(live) if live else None,
        max(finite) if finite else None,
        {k: v.decode() for k, (v, _) in entries.items()},
        {k: s for k, (_, s) in entries.items()},
    )


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_view_keeps_live_instances_sorted_and_tracks_the_next_expiry() -> None:
    view = RedisView("msa-gateway")
    rows = [
        content(
            "users",
            {
                "b": (doc(port=2), NOW + 3000),
                "a": (doc(port=1), NOW + 1500),
                "c": (doc(port=3), math.inf),
                "dead": (doc(port=4), NOW),  # expiry == now counts as expired
            },
        )
    ]
    assert view.apply(rows, NOW) == (True, [])
    assert [i.id for i in view.discovered()["users"]] == ["a", "b", "c"]
    assert view.next_expiry_ms() == NOW + 1500
    assert view.due(NOW + 1499) == []
    assert view.due(NOW + 1500) == ["users"]
    assert view.longest_ttl_ms == 3000


def test_view_omits_services_without_live_instances() -> None:
    view = RedisView("msa-gateway")
    assert view.apply([content("gone", {"a": (doc(), NOW - 1)})], NOW) == (False, [])
    assert view.discovered() == {}
    assert view.next_expiry_ms() is None


def test_view_skips_bad_entries_and_names_the_key_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    good = content(
        "users",
        {
            "ok": (doc(), NOW + 1000),
            "broken": (b"{", NOW + 1000),
            "noport": (doc(port=...), NOW + 1000),
            "big": (doc(port=99999), NOW + 1000),
            "bad id": (doc(), NOW + 1000),
        },
    )
    orphan = ServiceRead("users2", "d", None, None, {"x": doc().decode()}, {})
    bad_name = content("health", {"a": (doc(), NOW + 1000)})
    typo = ServiceRead("typo", None, None, None)
    view = RedisView("msa-gateway")
    view.apply([good, orphan, bad_name, typo], NOW)
    assert list(view.discovered()) == ["users"]
    assert [i.id for i in view.discovered()["users"]] == ["ok"]
    text = "\n".join(warnings(caplog))
    assert "msa-gateway:service:users:instances field 'broken': malformed JSON" in text
    assert "msa-gateway:service:users:instances field 'noport': port: missing" in text
    assert (
        "msa-gateway:service:users:instances field 'big': port: must be an integer 1-65535, not 99999" in text
    )
    assert "msa-gateway:service:users:instances field 'bad id': instance id" in text
    assert "msa-gateway:service:users2:instances field 'x': no expiry entry" in text
    assert "msa-gateway:services member 'health'" in text
    assert "msa-gateway:service:typo:instances: wrong type (want a hash and a zset)" in text
    assert len(warnings(caplog)) == 7
    view.apply([good, orphan, bad_name, typo], NOW)  # the same problems again: not repeated
    assert len(warnings(caplog)) == 7


def test_view_merges_legacy_hashes_and_current_layout_wins(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    view = RedisView("msa-gateway")
    view.apply([content("users", {"a": (doc(port=1), math.inf)})], NOW)
    legacy = {
        "service:users": {"a": "10.0.0.9:9", "b": "10.0.0.9:10"},
        "service:orders": {"o1": "127.0.0.1:7000", "bad": "nope"},
        "service:bad/name": {"x": "127.0.0.1:1"},
    }
    assert view.apply_legacy(legacy)
    snap = view.discovered()
    assert [(i.id, i.port) for i in snap["users"]] == [("a", 1), ("b", 10)]
    assert snap["orders"] == (Instance(id="o1", host="127.0.0.1", port=7000, source="redis"),)
    text = "\n".join(warnings(caplog))
    assert "service:users field 'a': shadowed" in text
    assert "service:orders field 'bad'" in text
    assert "service:bad/name:" in text
    assert not view.apply_legacy(legacy), "the same hashes again change nothing"
    assert view.apply_legacy({})
    assert [i.id for i in view.discovered()["users"]] == ["a"] and "orders" not in view.discovered()


def test_an_unchanged_service_keeps_its_tuple_and_a_digest_decides_what_is_read() -> None:
    view = RedisView("msa-gateway")
    view.apply(
        [content("a", {"x": (doc(port=1), math.inf)}), content("b", {"y": (doc(port=2), math.inf)})], NOW
    )
    before = view.discovered()
    # the same content under a new digest (a re-read): equal instances keep the very same tuple
    assert view.apply([content("a", {"x": (doc(port=1), math.inf)}, digest="d2")], NOW) == (False, [])
    assert view.discovered()["a"] is before["a"]
    assert view.digest("a") == "d2" and view.digest("unknown") == ""
    # digest-only rows (a resync step): a match changes nothing, a difference asks for a read
    same, other = ServiceRead("a", "d2", None, None), ServiceRead("b", "d9", None, None)
    assert view.apply([same, other], NOW) == (False, ["b"])
    assert view.apply([content("b", {"y": (doc(port=3), math.inf)}, digest="d9")], NOW) == (True, [])
    after = view.discovered()
    assert after["a"] is before["a"] and after["b"][0].port == 3


def test_services_missing_from_the_set_are_dropped_and_the_legacy_part_stays() -> None:
    view = RedisView("msa-gateway")
    view.apply([content("a", {"x": (doc(), math.inf)}), content("b", {"y": (doc(), math.inf)})], NOW)
    view.apply_legacy({"service:b": {"z": "127.0.0.1:1"}})
    assert view.drop_missing({"a"})
    assert {n: [i.id for i in t] for n, t in view.discovered().items()} == {"a": ["x"], "b": ["z"]}
    assert not view.drop_missing({"a"})


def test_parse_answer_reads_rows_with_and_without_content() -> None:
    payload = orjson.dumps(
        [
            str(NOW),
            [
                ["users", "d1", "inf", False, ["a", doc(port=1).decode()], ["a", "inf"]],
                ["same", "d2", str(NOW + 5), str(NOW + 9)],
                ["typo", False, False, False],
            ],
            "17",
        ]
    )
    now, rows, cursor = parse_answer(payload)
    assert (now, cursor) == (NOW, "17")
    assert rows[0].fields == {"a": doc(port=1).decode()} and rows[0].scores == {"a": math.inf}
    assert rows[1] == ServiceRead("same", "d2", NOW + 5, NOW + 9)
    assert rows[2].digest is None and rows[2].fields is None


def test_parse_answer_survives_invalid_utf8(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    payload = b'["1", [["users", "d", "inf", false, ["a", "{\\"host\\": \\"h\xff\\", \\"port\\": 1}"], ["a", "inf"]]]]'
    now, rows, _ = parse_answer(payload)
    view = RedisView("msa-gateway")
    view.apply(rows, now)
    assert view.discovered() == {}
    assert "not a bare host" in warnings(caplog)[0]


def test_events_name_their_service() -> None:
    assert parse_event(b'{"op": "register", "service": "users", "id": "a"}') == "users"
    assert parse_event(b"not json") is None
    assert parse_event(b'["users"]') is None
    assert parse_event(None) is None


def test_ttl_ms_converts_seconds_and_maps_infinity_to_never() -> None:
    assert ttl_ms(1.5) == 1500
    assert ttl_ms(math.inf) == 0
    for bad in (0.0, -1.0, math.nan, 10**9):
        with pytest.raises(ValueError):
            ttl_ms(bad)
