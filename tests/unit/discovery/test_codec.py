"""The instance record codec: one rule set for YAML, Redis, etcd, the admin API and the CLI."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest

from msa_gateway.discovery import codec
from msa_gateway.discovery.codec import RecordError
from msa_gateway.model import Instance


def rec(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"host": "10.0.0.5", "port": 8001}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def test_every_field_is_read_and_metadata_sorted() -> None:
    doc = rec(id="a1", weight=3, health_path="/hz", metadata={"zone": "b", "version": "2"}, scheme="http")
    assert codec.decode_record(doc, source="redis") == Instance(
        id="a1",
        host="10.0.0.5",
        port=8001,
        weight=3,
        health_path="/hz",
        metadata=(("version", "2"), ("zone", "b")),
        source="redis",
    )


def test_defaults_id_weight_and_optional_fields() -> None:
    inst = codec.decode_record(rec(), source="etcd")
    assert (inst.id, inst.weight, inst.health_path, inst.metadata, inst.source, inst.scheme) == (
        "10.0.0.5:8001",
        1,
        None,
        (),
        "etcd",
        "http",
    )
    assert codec.decode_record(rec(health_path=None, metadata=None), source="x").metadata == ()


def test_ipv6_hosts_lose_their_brackets_and_the_default_id_keeps_them() -> None:
    for host in ("::1", "[::1]"):
        inst = codec.decode_record(rec(host=host, port=80), source="static")
        assert (inst.host, inst.id, inst.address) == ("::1", "[::1]:80", "[::1]:80")


def test_the_registry_key_id_wins_over_the_record_id() -> None:
    assert codec.decode_record(rec(id="inside"), source="redis", instance_id="key").id == "key"


@pytest.mark.parametrize(
    ("value", "stored"),
    [("a", "a"), ("", ""), (2, "2"), (-7, "-7"), (1.5, "1.5"), (True, "true"), (False, "false")],
)
def test_metadata_numbers_and_booleans_become_strings(value: object, stored: str) -> None:
    inst = codec.decode_record(rec(metadata={"k": value}), source="redis")
    assert inst.metadata == (("k", stored),)


@pytest.mark.parametrize(
    ("doc", "field", "reason"),
    [
        ([1, 2], "", "expected an object, not [1,2]"),
        ("text", "", "expected an object"),
        (rec(host=...), "host", "missing"),
        (rec(host=""), "host", "non-empty string"),
        (rec(host=5), "host", "non-empty string, not 5"),
        (rec(host="http://h"), "host", "not a bare host name or IP address"),
        (rec(host="h/x"), "host", "not a bare host"),
        (rec(host="a:b"), "host", "not a bare host"),
        (rec(host="h h"), "host", "not a bare host"),
        (rec(host="x" * 254), "host", "not a bare host"),
        (rec(port=...), "port", "missing"),
        (rec(port=0), "port", "must be an integer 1-65535, not 0"),
        (rec(port=65536), "port", "must be an integer 1-65535, not 65536"),
        (rec(port="8001"), "port", 'must be an integer 1-65535, not "8001"'),
        (rec(port=True), "port", "not true"),
        (rec(port=80.0), "port", "not 80.0"),
        (rec(weight=0), "weight", "must be an integer 1-1000, not 0"),
        (rec(weight=1001), "weight", "1-1000"),
        (rec(weight=1.5), "weight", "1-1000"),
        (rec(weight=False), "weight", "1-1000"),
        (rec(health_path="hz"), "health_path", "must be null or start with '/'"),
        (rec(health_path=1), "health_path", "start with '/'"),
        (rec(scheme="https"), "scheme", "only 'http'"),
        (rec(id="a b"), "id", "instance ids are 1-256 characters"),
        (rec(id="a/b"), "id", "instance ids"),
        (rec(id=""), "id", "instance ids"),
        (rec(id="x" * 257), "id", "instance ids"),
        (rec(id=5), "id", "must be a string"),
        (rec(metadata=["a"]), "metadata", "must be an object"),
        (rec(metadata={"a": None}), "metadata.a", "string, number or boolean, not null"),
        (rec(metadata={"a": {"b": 1}}), "metadata.a", "string, number or boolean"),
        (rec(metadata={"a": [1]}), "metadata.a", "string, number or boolean"),
        (rec(metadata={"a": math.inf}), "metadata.a", "string, number or boolean"),
        (rec(metadata={"a": "x" * 513}), "metadata.a", "longer than 512"),
        (rec(metadata={"": "x"}), "metadata", "keys are strings of 1-128"),
        (rec(metadata={"k" * 129: "x"}), "metadata", "keys are strings of 1-128"),
        (rec(metadata={1: "x"}), "metadata", "keys are strings"),
        (rec(metadata={f"k{i}": "v" for i in range(65)}), "metadata", "at most 64 pairs"),
    ],
)
def test_bad_records_name_the_field_and_the_reason(doc: object, field: str, reason: str) -> None:
    with pytest.raises(RecordError) as caught:
        codec.decode_record(doc, source="redis")
    assert caught.value.field == field
    assert reason in caught.value.reason
    assert str(caught.value) == (f"{field}: {caught.value.reason}" if field else caught.value.reason)


def test_limits_are_inclusive() -> None:
    doc = rec(
        id="x" * 256,
        host="h" * 253,
        port=65535,
        weight=1000,
        metadata={"k" * 128: "v" * 512, **{f"k{i}": "v" for i in range(63)}},
    )
    inst = codec.decode_record(doc, source="redis")
    assert (len(inst.id), len(inst.host), inst.port, inst.weight, len(inst.metadata)) == (
        256,
        253,
        65535,
        1000,
        64,
    )
    assert codec.decode_record(rec(port=1, weight=1), source="redis").port == 1


def test_unknown_fields_are_ignored_from_registries_and_rejected_from_users() -> None:
    doc = rec(zone="a", colour="red")
    assert codec.decode_record(doc, source="redis").host == "10.0.0.5"
    with pytest.raises(RecordError) as caught:
        codec.decode_record(doc, source="static", unknown="reject")
    assert str(caught.value) == "colour: unknown field"


def test_decode_reads_json_and_says_when_it_is_not() -> None:
    assert codec.decode(b'{"host": "h", "port": 1}', source="etcd", instance_id="i").id == "i"
    assert codec.decode('{"host": "h", "port": 1}', source="etcd").id == "h:1"
    with pytest.raises(RecordError, match="malformed JSON"):
        codec.decode(b"{not json", source="etcd")
    with pytest.raises(RecordError, match="expected an object"):
        codec.decode(b"[]", source="etcd")


@pytest.mark.parametrize(
    "inst",
    [
        Instance(id="i-1", host="::1", port=80, weight=7, health_path="/h", metadata=(("a", "1"), ("b", ""))),
        Instance(id="b", host="h", port=1),
        Instance(id="c", host="svc.local", port=65535, weight=1000, metadata=(("zone", "a"),)),
    ],
)
def test_encode_round_trips_through_decode(inst: Instance) -> None:
    data = codec.encode(inst)
    assert set(orjson.loads(data)) == codec.FIELDS
    assert codec.decode(data, source=inst.source, instance_id=inst.id) == inst
    assert codec.decode(data, source=inst.source) == inst, "the record carries its id too"


def test_normalize_returns_what_a_registry_reads_back() -> None:
    assert codec.normalize(Instance(id="a", host="[::1]", port=1)).host == "::1"
    unsorted = Instance(id="a", host="h", port=1, metadata=(("z", "1"), ("a", "2")))
    assert codec.normalize(unsorted).metadata == (("a", "2"), ("z", "1"))
    for bad in (
        Instance(id="a b", host="h", port=1),
        Instance(id="", host="h", port=1),
        Instance(id="a", host="h/x", port=1),
        Instance(id="a", host="h", port=0),
        Instance(id="a", host="h", port=1, weight=0),
        Instance(id="a", host="h", port=1, health_path="x"),
        Instance(id="a", host="h", port=1, scheme="https"),
    ):
        with pytest.raises(RecordError):
            codec.normalize(bad)


def test_check_ttl() -> None:
    assert codec.check_ttl(0.001) == 0.001
    assert codec.check_ttl(math.inf) == math.inf
    assert codec.check_ttl(codec.MAX_TTL) == codec.MAX_TTL
    for bad in (0.0, -1.0, math.nan, -math.inf, codec.MAX_TTL + 1):
        with pytest.raises(ValueError, match="ttl must be between"):
            codec.check_ttl(bad)
