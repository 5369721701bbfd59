"""Health shared between workers (one prober per host, ejections relayed) and between replicas (hints).

Real processes: ``msa-gateway run --workers 2`` against real backends, and three gateways on one
real Redis or etcd with ``SHARED_HEALTH_HINTS=true``. Times are printed (``-s``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from msa_gateway.health.hints import EtcdHints, RedisHints
from tests.support.backend import BackendProcess, running_backends
from tests.support.etcd_server import EtcdServer, etcd_server
from tests.support.gateway import GatewayProcess, service_yaml
from tests.support.redis_server import RedisServer, redis_server_fixture  # noqa: F401
from tests.support.registries import EtcdRegistry, RedisRegistry, Registry
from tests.support.workers import first_seen, fresh_connections, scrape, total, wait_workers

OUTLIER = {"consecutive_failures": 3, "base_ejection_time": 30.0}


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with etcd_server() as server:
        yield server


def ejected(backend: BackendProcess) -> Callable[[Any], bool]:
    """Return a check: ``/services/svc/health`` shows ``backend`` ejected."""
    address = f"{backend.host}:{backend.port}"
    return lambda body: any(i["ejected"] for i in body["instances"] if i["address"] == address)


async def test_active_checks_run_once_per_host_and_every_worker_has_the_result_within_1s() -> None:
    with running_backends("a") as (a,):
        check = {"path": "/health", "interval": 0.2, "timeout": 1.0, "unhealthy_threshold": 1}
        with GatewayProcess(service_yaml({"svc": [a.port]}, health_check=check), WORKERS="2") as gw:
            async with fresh_connections() as session:
                await wait_workers(session, gw.url, 2)
                samples = await scrape(session, gw.url)
                assert total(samples, "gateway_background_tasks", task="health_probe") == 1
                a.control(health=503)
                seen = await first_seen(
                    session, f"{gw.url}/health/", lambda b: b["services"]["svc"]["healthy_instances"] == 0, 2
                )
                gap = max(seen.values()) - min(seen.values())
                print(f"\nunhealthy seen by workers {sorted(seen)} {gap * 1000:.0f} ms apart")
                assert gap < 1.0
                answers = set()
                for _ in range(20):  # /services answers the same whichever worker serves it
                    async with session.get(f"{gw.url}/services") as r:
                        body = await r.json()
                        inst = body["services"]["svc"]["instances"][0]["health"]
                        answers.add((r.headers["x-gateway-worker"], inst["status"], inst["since"]))
                assert {w for w, _, _ in answers} == {"0", "1"}
                assert len({(s, since) for _, s, since in answers}) == 1, answers


async def test_a_passive_ejection_by_one_worker_reaches_the_other_within_1s() -> None:
    with running_backends("a", "b") as (a, b):
        config = service_yaml({"svc": [a.port, b.port]}, outlier=OUTLIER)
        with GatewayProcess(config, WORKERS="2") as gw:
            async with (
                fresh_connections() as session,
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as one_connection,
            ):
                await wait_workers(session, gw.url, 2)
                a.kill()
                for _ in range(10):  # one keep-alive connection: one worker sees a fail and ejects it
                    async with one_connection.get(f"{gw.url}/svc/x") as r:
                        assert r.status == 200  # retried on b
                seen = await first_seen(session, f"{gw.url}/services/svc/health", ejected(a), 2)
    gap = max(seen.values()) - min(seen.values())
    print(f"\nejection seen by workers {sorted(seen)} {gap * 1000:.0f} ms apart")
    assert gap < 1.0


@pytest.fixture(params=["redis", "etcd"])
async def registry(request: pytest.FixtureRequest) -> AsyncIterator[Registry]:
    if request.param == "redis":
        async with RedisRegistry.running(request.getfixturevalue("redis_server")) as redis_reg:
            yield redis_reg
    else:
        async with EtcdRegistry.running(request.getfixturevalue("etcd")) as etcd_reg:
            yield etcd_reg


async def wait_ready(session: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            async with session.get(f"{url}/health/ready") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        assert time.monotonic() < deadline, f"{url} not ready"
        await asyncio.sleep(0.02)


async def test_replicas_that_never_sent_a_request_avoid_an_ejected_instance_within_1s(
    registry: Registry,
) -> None:
    config = {"defaults": {"health_check": {"path": None}, "outlier": OUTLIER}}
    with running_backends("a", "b") as (a, b):
        await registry.register("svc", a.instance())
        await registry.register("svc", b.instance())
        env = {**registry.env(), "SHARED_HEALTH_HINTS": "true"}
        gws = [GatewayProcess(config, None, **env) for _ in range(3)]
        try:
            for gw in gws:
                gw.start()
            async with fresh_connections() as session:
                for gw in gws:
                    await wait_ready(session, gw.url)
                a.kill()
                seen: dict[int, float] = {}
                deadline = time.monotonic() + 15
                while len(seen) < 3:
                    if 0 not in seen:  # traffic only through the first replica
                        async with session.get(f"{gws[0].url}/svc/x") as r:
                            assert r.status == 200
                    for n, gw in enumerate(gws):
                        async with session.get(f"{gw.url}/services/svc/health") as r:
                            if n not in seen and ejected(a)(await r.json()):
                                seen[n] = time.monotonic()
                    assert time.monotonic() < deadline, f"seen by {sorted(seen)}"
                lags = [seen[n] - seen[0] for n in (1, 2)]
                print(f"\n{registry.kind}: replicas avoided it {[round(x * 1000) for x in lags]} ms after")
                assert max(lags) < 1.0
                for gw in gws[1:]:  # and they route around it without ever trying it
                    for _ in range(4):
                        async with session.get(f"{gw.url}/svc/x") as r:
                            assert r.status == 200
                            assert r.headers["x-backend-instance"] == "b"
                    samples = await scrape(session, gw.url)
                    assert total(samples, "gateway_upstream_errors_total") == 0
        finally:
            for gw in gws:
                gw.close()


@pytest.mark.parametrize("kind", ["redis", "etcd"])
async def test_hints_expire_by_ttl(kind: str, request: pytest.FixtureRequest) -> None:
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        backend: RedisHints | EtcdHints = RedisHints(server.settings(service_discovery_type="redis"))
    else:
        reg = EtcdRegistry(request.getfixturevalue("etcd"))
        backend = EtcdHints(reg.settings())
        await reg.aclose()
    try:
        origin = f"ttl-{kind}-{time.monotonic_ns()}"
        await backend.publish("svc", "svc/a", origin, 1.0)
        (hint,) = [h for h in await backend.read() if h[2] == origin]
        assert hint[:3] == ("svc", "svc/a", origin)
        assert 0 < hint[3] <= 2.0  # etcd counts whole seconds
        deadline = time.monotonic() + 15  # etcd may round a 1 s lease up to its minimum TTL
        while [h for h in await backend.read() if h[2] == origin]:
            assert time.monotonic() < deadline, "the hint did not expire"
            await asyncio.sleep(0.05)
    finally:
        await backend.aclose()
