"""The same odd instance record gives the same instance (or the same refusal) in every place it enters."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math

import orjson
import pytest

from msa_gateway.discovery.consul import parse_entry
from msa_gateway.discovery.etcd import InstanceTable
from msa_gateway.discovery.redis_view import ServiceRead, decode_service
from msa_gateway.discovery.registry_cli import _instance
from msa_gateway.errors import ConfigError
from msa_gateway.model import Instance
from msa_gateway.routers.admin import _parse_body
from msa_gateway.settings import parse_config

# Bracketed IPv6, numbers and a boolean in metadata: each place used to treat some of these differently.
ODD = {
    "id": "i1",
    "host": "[::1]",
    "port": 8001,
    "weight": 2,
    "metadata": {"version": 2, "canary": True, "ratio": 0.5, "zone": "a"},
}
EXPECTED = Instance(
    id="i1",
    host="::1",
    port=8001,
    weight=2,
    metadata=(("canary", "true"), ("ratio", "0.5"), ("version", "2"), ("zone", "a")),
)
BAD = {**ODD, "port": "8001"}
BAD_REASON = 'port: must be an integer 1-65535, not "8001"'
NOW = 1_700_000_000_000
PREFIX = "/msa-gateway/services/"


def expected(source: str) -> Instance:
    return dataclasses.replace(EXPECTED, source=source)


def from_yaml(record: dict[str, object]) -> Instance:
    return (
        parse_config({"services": {"web": {"instances": [record]}}}, "gw.yaml").services["web"].instances[0]
    )


def from_redis(record: dict[str, object]) -> tuple[tuple[Instance, ...], tuple[str, ...]]:
    read = ServiceRead("web", "digest", None, None, {"i1": orjson.dumps(record).decode()}, {"i1": math.inf})
    found, problems = decode_service("msa-gateway", read, NOW)
    return tuple(found.values()), tuple(problems)


def from_etcd(record: dict[str, object]) -> tuple[Instance, ...]:
    table = InstanceTable(PREFIX)
    table.put(f"{PREFIX}web/i1".encode(), orjson.dumps(record))
    return table.snapshot().get("web", ())


def from_consul(record: dict[str, object]) -> Instance | None:
    service = {
        "ID": record["id"],
        "Address": record["host"],
        "Port": record["port"],
        "Weights": {"Passing": record["weight"], "Warning": 1},
        "Meta": record["metadata"],
    }
    return parse_entry("web", {"Service": service, "Checks": []}, allow_warning=False)


def test_static_yaml() -> None:
    assert from_yaml(ODD) == expected("static")
    with pytest.raises(ConfigError) as caught:
        from_yaml(BAD)
    assert str(caught.value) == f"gw.yaml: services.web.instances.0.{BAD_REASON}"


def test_redis() -> None:
    assert from_redis(ODD) == ((expected("redis"),), ())
    assert from_redis(BAD) == ((), (f"msa-gateway:service:web:instances field 'i1': {BAD_REASON}",))


def test_etcd(caplog: pytest.LogCaptureFixture) -> None:
    assert from_etcd(ODD) == (expected("etcd"),)
    with caplog.at_level(logging.WARNING, logger="msa_gateway.discovery.etcd"):
        assert from_etcd(BAD) == ()
    assert f"skipping key {PREFIX}web/i1: {BAD_REASON}" in caplog.text


def test_consul(caplog: pytest.LogCaptureFixture) -> None:
    # Consul's own format (Service.Address/Port/Meta), through the same host, id and metadata rules.
    assert from_consul(ODD) == expected("consul")
    with caplog.at_level(logging.WARNING, logger="msa_gateway.discovery.consul"):
        assert from_consul({**ODD, "metadata": {"a": None}}) is None
        assert from_consul({**ODD, "host": "h/x"}) is None
    assert "metadata.a: must be a string, number or boolean, not null" in caplog.text
    assert 'host: "h/x" is not a bare host name' in caplog.text


def test_admin_api_body() -> None:
    assert _parse_body(orjson.dumps({**ODD, "ttl": 30}), "etcd") == (expected("etcd"), 30.0)
    with pytest.raises(ValueError) as caught:
        _parse_body(orjson.dumps(BAD), "redis")
    assert str(caught.value) == BAD_REASON


def test_cli_arguments() -> None:
    args = argparse.Namespace(
        service="web",
        host="[::1]",
        port=8001,
        instance_id="i1",
        weight=2,
        health_path=None,
        meta=["version=2", "canary=true", "ratio=0.5", "zone=a"],
        ttl=None,
        heartbeat=False,
    )
    assert _instance(args, "redis") == (expected("redis"), math.inf)
    with pytest.raises(ValueError) as caught:
        _instance(argparse.Namespace(**{**vars(args), "port": 0}), "redis")
    assert str(caught.value) == "port: must be an integer 1-65535, not 0"
