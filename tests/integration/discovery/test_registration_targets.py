"""``msa-gateway register``/``deregister`` and the admin API write to the registry SERVICE_DISCOVERY_TYPE names.

Both a real redis-server and a real etcd run in every test, so a write that went to the wrong one shows up; with
``static`` and ``consul`` nothing is written anywhere and the caller is told where registrations go instead.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from msa_gateway.discovery import codec
from msa_gateway.discovery.etcd import EtcdClient, b64, prefix_range_end, unb64
from msa_gateway.discovery.redis_registry import DEFAULT_PREFIX, instances_key
from msa_gateway.model import Instance
from msa_gateway.settings import Settings
from tests.support.consul_double import ConsulDouble
from tests.support.etcd_server import EtcdServer, etcd_server
from tests.support.gateway import InProcessGateway, serve_gateway
from tests.support.procs import REPO, python_env
from tests.support.redis_server import RedisServer, redis_server_fixture  # noqa: F401
from tests.support.traffic import eventually

TOKEN = "admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NO_PROBES = {"defaults": {"health_check": {"path": None}}}
WRITERS = ("redis", "etcd")


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with etcd_server() as server:
        yield server


@dataclass
class Registries:
    """A redis-server, an etcd prefix and a Consul double, all up, and what each holds for a service."""

    redis: RedisServer
    etcd: EtcdServer
    consul_port: int
    prefix: str

    def env(self, kind: str) -> dict[str, str]:
        return {
            "SERVICE_DISCOVERY_TYPE": kind,
            "REDIS_HOST": "127.0.0.1",
            "REDIS_PORT": str(self.redis.port),
            "REDIS_DB": "0",
            "ETCD_ENDPOINTS": self.etcd.url,
            "ETCD_PREFIX": self.prefix,
            "CONSUL_HOST": "127.0.0.1",
            "CONSUL_PORT": str(self.consul_port),
        }

    def settings(self, kind: str) -> Settings:
        values: dict[str, Any] = {k.lower(): v for k, v in self.env(kind).items()}
        return Settings(_env_file=None, redis_url=None, gateway_admin_token=TOKEN, **values)  # type: ignore[call-arg]

    async def in_redis(self, service: str) -> dict[str, Instance]:
        async with Redis(host="127.0.0.1", port=self.redis.port, decode_responses=True) as raw:
            fields = await raw.hgetall(instances_key(DEFAULT_PREFIX, service))
        return {str(k): codec.decode(v, source="redis", instance_id=str(k)) for k, v in fields.items()}

    async def in_etcd(self, service: str) -> dict[str, Instance]:
        client = EtcdClient([self.etcd.url])
        try:
            key = f"{self.prefix}{service}/".encode()
            answer = await client.call(
                "/kv/range", {"key": b64(key), "range_end": b64(prefix_range_end(key))}
            )
        finally:
            await client.aclose()
        found = {}
        for kv in answer.get("kvs", ()):
            iid = unb64(kv["key"]).decode().rsplit("/", 1)[1]
            found[iid] = codec.decode(unb64(kv["value"]), source="etcd", instance_id=iid)
        return found

    async def holdings(self, service: str) -> dict[str, dict[str, Instance]]:
        return {"redis": await self.in_redis(service), "etcd": await self.in_etcd(service)}


@pytest.fixture
async def registries(redis_server: RedisServer, etcd: EtcdServer) -> AsyncIterator[Registries]:
    double = ConsulDouble().start()
    try:
        yield Registries(redis_server, etcd, double.port, f"/msa-test/{uuid.uuid4().hex[:8]}/")
    finally:
        await asyncio.to_thread(double.close)


def cli(registries: Registries, kind: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = python_env(**registries.env(kind))
    env.pop("REDIS_URL", None)
    cmd = [sys.executable, "-m", "msa_gateway.cli", *argv]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=30)


def expected(kind: str, **fields: Any) -> Instance:
    base: dict[str, Any] = {"id": "c1", "host": "127.0.0.1", "port": 9301, "source": kind}
    base.update(fields)
    return Instance(**base)


def others(kind: str) -> list[str]:
    return [k for k in WRITERS if k != kind]


# --- the CLI ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", WRITERS)
async def test_cli_writes_to_the_configured_registry_only(registries: Registries, kind: str) -> None:
    argv = ["register", "web", "--host", "127.0.0.1", "--port", "9301", "--id", "c1", "--meta", "v=2"]
    done = await asyncio.to_thread(cli, registries, kind, *argv)
    assert done.returncode == 0, done.stderr
    held = await registries.holdings("web")
    assert held[kind] == {"c1": expected(kind, metadata=(("v", "2"),))}
    assert all(held[other] == {} for other in others(kind)), held

    done = await asyncio.to_thread(cli, registries, kind, "deregister", "web", "c1")
    assert done.returncode == 0, done.stderr
    assert await registries.holdings("web") == {"redis": {}, "etcd": {}}
    done = await asyncio.to_thread(cli, registries, kind, "deregister", "web", "c1")
    assert (done.returncode, done.stderr) == (1, "msa-gateway deregister: web/c1 is not registered\n")


@pytest.mark.parametrize(
    ("kind", "instead"), [("static", "add the instance to the YAML file"), ("consul", "Consul agent")]
)
async def test_cli_refuses_providers_without_registrations_in_one_line(
    registries: Registries, kind: str, instead: str
) -> None:
    for argv in (["register", "web", "--host", "127.0.0.1", "--port", "9301"], ["deregister", "web", "c1"]):
        done = await asyncio.to_thread(cli, registries, kind, *argv)
        assert done.returncode == 2
        lines = done.stderr.splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(
            f"msa-gateway {argv[0]}: SERVICE_DISCOVERY_TYPE={kind} takes no registrations"
        )
        assert instead in lines[0]
        assert done.stdout == ""
    assert await registries.holdings("web") == {"redis": {}, "etcd": {}}


async def test_cli_heartbeat_keeps_an_etcd_lease_alive_and_deregisters_on_sigterm(
    registries: Registries,
) -> None:
    env = python_env(**registries.env("etcd"))
    argv = [
        "register",
        "hb",
        "--host",
        "127.0.0.1",
        "--port",
        "9302",
        "--id",
        "h1",
        "--ttl",
        "1",
        "--heartbeat",
    ]
    proc = subprocess.Popen([sys.executable, "-m", "msa_gateway.cli", *argv], env=env, cwd=REPO)
    try:
        await eventually(
            lambda: registries.in_etcd("hb"), 15.0, expect={"h1": expected("etcd", id="h1", port=9302)}
        )
        await asyncio.sleep(2.5)  # well past the 1 s lease: only the heartbeats keep the key
        assert set(await registries.in_etcd("hb")) == {"h1"}
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 10) == 0
        assert await registries.in_etcd("hb") == {}, "deregistered on exit, not left to expire"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


# --- the admin API ---------------------------------------------------------------------------------------------


async def call(
    http: aiohttp.ClientSession, gw: InProcessGateway, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, gw.url + path, json=body, headers=AUTH) as resp:
        raw = await resp.read()
        return resp.status, (await resp.json(content_type=None) if raw else None)


@pytest.mark.parametrize("kind", WRITERS)
async def test_admin_api_writes_to_the_configured_registry_and_the_gateway_routes_it(
    registries: Registries, kind: str
) -> None:
    body = {"host": "127.0.0.1", "port": 9301, "id": "c1", "weight": 3, "metadata": {"v": 2}}
    async with (
        serve_gateway(NO_PROBES, settings=registries.settings(kind)) as gw,
        aiohttp.ClientSession() as http,
    ):
        status, doc = await call(http, gw, "POST", "/services/web/instances", body)
        assert status == 201, doc
        assert doc["metadata"] == {"v": "2"}
        stored = expected(kind, weight=3, metadata=(("v", "2"),))
        held = await registries.holdings("web")
        assert held[kind] == {"c1": stored}
        assert all(held[other] == {} for other in others(kind)), held

        await eventually(lambda: tuple(gw.runtime.instances_of("web").values()), 5.0, expect=(stored,))
        async with http.get(f"{gw.url}/services") as resp:
            listed = (await resp.json())["services"]["web"]["instances"]
        assert [(i["id"], i["source"], i["metadata"]) for i in listed] == [("c1", kind, {"v": "2"})]

        assert await call(http, gw, "DELETE", "/services/web/instances/c1") == (204, None)
        assert await registries.holdings("web") == {"redis": {}, "etcd": {}}
        await eventually(lambda: gw.runtime.instances_of("web"), 5.0, expect={})
        status, doc = await call(http, gw, "DELETE", "/services/web/instances/c1")
        assert (status, doc["error"]) == (404, "instance_not_found")


@pytest.mark.parametrize(
    ("kind", "instead"), [("static", "add the instance to the YAML file"), ("consul", "Consul agent")]
)
async def test_admin_api_answers_409_for_providers_without_registrations(
    registries: Registries, kind: str, instead: str
) -> None:
    async with (
        serve_gateway(NO_PROBES, settings=registries.settings(kind)) as gw,
        aiohttp.ClientSession() as http,
    ):
        for method, path, body in (
            ("POST", "/services/web/instances", {"host": "127.0.0.1", "port": 9301}),
            ("DELETE", "/services/web/instances/c1", None),
        ):
            status, doc = await call(http, gw, method, path, body)
            assert status == 409, doc
            assert doc["error"] == "registrations_not_supported"
            assert doc["detail"].startswith(f"SERVICE_DISCOVERY_TYPE={kind} takes no registrations")
            assert instead in doc["detail"]
    assert await registries.holdings("web") == {"redis": {}, "etcd": {}}
