"""A registry that comes back short after an outage does not shrink the routing table at once.

Real processes: ``redis-server`` restarted without persistence while three instances heartbeat
(``msa-gateway register --heartbeat``); a real etcd whose leases expire while the gateway is cut
off from it (a relay between them); the Consul double losing its catalog like a restarted agent.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from msa_gateway.discovery.etcd import b64
from tests.support.backend import BackendProcess, running_backends
from tests.support.etcd_server import EtcdServer, etcd_server
from tests.support.gateway import InProcessGateway, serve_gateway
from tests.support.redis_server import RedisServer, redis_server_fixture  # noqa: F401
from tests.support.registries import ConsulRegistry, EtcdRegistry, RedisRegistry
from tests.support.relay import Relay
from tests.support.traffic import Traffic, eventually, get_json, metric_value

NO_PROBES = {"defaults": {"health_check": {"path": None}}}  # discovery alone decides who gets traffic


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with etcd_server() as server:
        yield server


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, BackendProcess]]:
    with running_backends("a", "b", "c") as started:
        yield {b.name: b for b in started}


def ids(gw: InProcessGateway) -> set[str]:
    return {i.id for i in gw.runtime.instances_of("web").values()}


def swapped_sizes(caplog: pytest.LogCaptureFixture, since: int) -> list[int]:
    """Return the instance count of every snapshot swapped in after the ``since``-th log record."""
    return [
        r.instances  # type: ignore[attr-defined]
        for r in caplog.records[since:]
        if r.name == "msa_gateway.registry" and r.getMessage() == "registry updated"
    ]


async def test_redis_restarted_empty_under_heartbeats_never_shrinks_the_table(
    redis_server: RedisServer, backends: dict[str, BackendProcess], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with RedisRegistry.running(redis_server) as registry, contextlib.AsyncExitStack() as stack:
        for backend in backends.values():
            stack.enter_context(registry.heartbeat_process("web", backend.instance(), ttl=3))
        gw = await stack.enter_async_context(serve_gateway(NO_PROBES, settings=registry.settings()))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        await eventually(lambda: ids(gw), 15.0, expect={"a", "b", "c"})
        mark = len(caplog.records)
        async with Traffic(http, f"{gw.url}/web/echo") as traffic:
            restarted = time.perf_counter()
            await registry.down()
            await registry.up()  # no persistence: back empty; the heartbeats register again
            await eventually(lambda: gw.runtime.aggregator.outages, 10.0, expect=1)
            await eventually(
                lambda: gw.runtime.aggregator.up and gw.runtime.aggregator.recovery is None, 15.0
            )
            await traffic.wait_count(since=time.perf_counter(), count=20, timeout=5.0)
            during = traffic.since(restarted)
        assert traffic.failures() == [], "no request failed, none answered 404"
        assert all(n >= 3 for n in swapped_sizes(caplog, mark)), swapped_sizes(caplog, mark)
        assert ids(gw) == {"a", "b", "c"}
        assert {h.instance for h in during} == {"a", "b", "c"}
        assert any("discovery recovering after an outage" in r.getMessage() for r in caplog.records[mark:])
        assert any("every missing instance re-registered" in r.getMessage() for r in caplog.records[mark:])
        assert await metric_value(http, gw.url, "gateway_discovery_outages_total", "redis") == 1.0


async def test_redis_instances_that_do_not_come_back_leave_when_the_grace_ends(
    redis_server: RedisServer, backends: dict[str, BackendProcess], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    a, b = backends["a"], backends["b"]
    async with RedisRegistry.running(redis_server) as registry:
        await registry.register("web", a.instance())
        await registry.register("web", b.instance())
        settings = registry.settings(discovery_recovery_grace=1.5)
        async with serve_gateway(NO_PROBES, settings=settings) as gw, aiohttp.ClientSession() as http:
            await eventually(lambda: ids(gw), 10.0, expect={"a", "b"})
            await registry.down()
            await registry.up()
            await eventually(lambda: gw.runtime.aggregator.recovery is not None, 10.0)
            came_back = time.perf_counter()
            health = await get_json(http, f"{gw.url}/health/")
            assert health["status"] == "degraded"
            assert health["discovery"]["recovering"]["held_instances"] == ["web/a", "web/b"]
            assert await metric_value(http, gw.url, "gateway_discovery_recovering", "redis") == 1.0
            await registry.register("web", a.instance())  # a re-registers, b never does
            await eventually(
                lambda: gw.runtime.aggregator.recovery is not None and ids(gw), 5.0, expect={"a", "b"}
            )
            left = came_back + await eventually(lambda: ids(gw), 10.0, expect={"a"})
            assert left - came_back >= 1.0, "b was held for the grace period"
            assert (await get_json(http, f"{gw.url}/health/"))["discovery"]["recovering"] is None
    over = [r for r in caplog.records if "did not re-register in the grace period" in r.getMessage()]
    assert len(over) == 1 and over[0].removed == ["web/b"]  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def relayed(etcd: EtcdServer) -> AsyncIterator[Relay]:
    relay = Relay(int(etcd.url.rsplit(":", 1)[1]))
    await relay.restore()
    try:
        yield relay
    finally:
        await relay.cut()


async def test_etcd_lease_expired_while_cut_off_is_held_and_a_deregistration_event_is_not(
    etcd: EtcdServer, backends: dict[str, BackendProcess]
) -> None:
    a, b, c = backends["a"], backends["b"], backends["c"]
    async with EtcdRegistry.running(etcd) as registry, relayed(etcd) as relay:
        await registry.register("web", a.instance())
        await registry.register("web", c.instance())
        settings = registry.settings(etcd_endpoints=relay.url, discovery_recovery_grace=30)
        with registry.heartbeat_process("web", b.instance(), ttl=1) as keepalive:
            async with serve_gateway(NO_PROBES, settings=settings) as gw:
                await eventually(lambda: ids(gw), 10.0, expect={"a", "b", "c"})
                await relay.cut()
                await eventually(lambda: gw.runtime.aggregator.up, 10.0, expect=False)
                keepalive.kill()  # b's lease expires while the gateway cannot see it happen

                async def b_gone_in_etcd() -> bool:
                    answer = await registry.client.call("/kv/range", {"key": b64(registry.prefix + "web/b")})
                    return not answer.get("kvs")

                await eventually(b_gone_in_etcd, 10.0)
                await relay.restore()
                await eventually(lambda: gw.runtime.aggregator.up, 15.0)
                assert gw.runtime.aggregator.recovery is not None
                assert ids(gw) == {"a", "b", "c"}, "b is held: its lease expired while we were cut off"
                await registry.deregister("web", "c")  # seen as an event: applied at once
                await eventually(lambda: ids(gw), 5.0, expect={"a", "b"})


async def test_consul_agent_restarted_without_its_services_keeps_them_for_the_grace(
    backends: dict[str, BackendProcess],
) -> None:
    a, b = backends["a"], backends["b"]
    async with ConsulRegistry.running() as registry:
        await registry.register("web", a.instance())
        await registry.register("web", b.instance())
        settings = registry.settings(discovery_recovery_grace=1.0)
        async with serve_gateway(NO_PROBES, settings=settings) as gw, aiohttp.ClientSession() as http:
            await eventually(lambda: ids(gw), 10.0, expect={"a", "b"})
            await registry.down()
            await registry.deregister("web", "a")  # the restarted agent lost its local services
            await registry.deregister("web", "b")
            await eventually(lambda: gw.runtime.aggregator.up, 10.0, expect=False)
            await registry.up()
            await eventually(lambda: gw.runtime.aggregator.recovery is not None, 15.0)
            assert ids(gw) == {"a", "b"}
            async with Traffic(http, f"{gw.url}/web/echo") as traffic:
                await traffic.wait_count(since=time.perf_counter(), count=10, timeout=5.0)
            assert traffic.failures() == []
            await registry.register("web", a.instance())
            await eventually(lambda: ids(gw), 10.0, expect={"a"})  # b left when the grace ended
