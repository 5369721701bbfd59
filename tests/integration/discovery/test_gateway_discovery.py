"""Discovery end to end: a real gateway routing real backends from Redis, etcd and the Consul double.

Every test writes the registry the way a service would (``RedisRegistrar``, ``msa-gateway
register --heartbeat``, ``etcdctl``, Consul's catalog) and observes the result as a client of the
gateway. ``python -m bench.discovery`` measures the same paths over more trials; these tests assert
looser bounds so that a loaded CI machine does not flake, and print what they measured (``-s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import statistics
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.support.backend import BackendProcess, running_backends
from tests.support.etcd_server import EtcdServer, etcd_server
from tests.support.gateway import InProcessGateway, gateway_process, serve_gateway
from tests.support.redis_server import RedisServer, redis_server_fixture  # noqa: F401
from tests.support.registries import ConsulRegistry, EtcdRegistry, RedisRegistry, Registry
from tests.support.traffic import AttemptClock, Traffic, by, eventually, get_json, metric_value, served_by

NO_PROBES = {"defaults": {"health_check": {"path": None}}}  # discovery alone decides who gets traffic
TRIALS = 5


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with etcd_server() as server:
        yield server


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, BackendProcess]]:
    with running_backends("a", "b", "c") as started:
        yield {b.name: b for b in started}


def make_registry(
    kind: str, request: pytest.FixtureRequest
) -> contextlib.AbstractAsyncContextManager[Registry]:
    if kind == "redis":
        return RedisRegistry.running(request.getfixturevalue("redis_server"))
    if kind == "etcd":
        return EtcdRegistry.running(request.getfixturevalue("etcd"))
    return ConsulRegistry.running()


@pytest.fixture(params=["redis", "etcd", "consul"])
async def registry(request: pytest.FixtureRequest) -> AsyncIterator[Registry]:
    async with make_registry(request.param, request) as reg:
        yield reg


@pytest.fixture(params=["redis", "etcd"])
async def ttl_registry(request: pytest.FixtureRequest) -> AsyncIterator[Registry]:
    async with make_registry(request.param, request) as reg:
        yield reg


def ids(gw: InProcessGateway, service: str) -> set[str]:
    """Return the ids of ``service``'s instances in the gateway's current snapshot."""
    return {i.id for i in gw.runtime.instances_of(service).values()}


async def test_registration_is_routed_within_1s_and_deregistration_removes_it(
    registry: Registry, backends: dict[str, BackendProcess]
) -> None:
    a, b = backends["a"], backends["b"]
    await registry.register("web", a.instance())
    joined: list[float] = []
    left: list[float] = []
    async with (
        serve_gateway(NO_PROBES, settings=registry.settings()) as gw,
        aiohttp.ClientSession() as http,
        Traffic(http, f"{gw.url}/web/echo") as traffic,
    ):
        await traffic.wait_for(by("a"), since=0.0, timeout=5.0)
        for k in range(TRIALS):
            t0 = time.perf_counter()
            await registry.register("web", b.instance(id=f"b-{k}"))
            hit = await traffic.wait_for(by("b"), since=t0, timeout=3.0)
            joined.append(hit.done - t0)
            t1 = time.perf_counter()
            await registry.deregister("web", f"b-{k}")
            await eventually(lambda: ids(gw, "web"), 3.0, expect={"a"})
            left.append(time.perf_counter() - t1)
            after = time.perf_counter()
            await traffic.wait_count(since=after, count=6, timeout=3.0)
            assert {h.instance for h in traffic.since(after)} == {"a"}, "deregistered: no more traffic"
        assert traffic.failures() == [], "adding and removing instances never fails a request"
    print(
        f"\n{registry.kind}: registration -> first routed request p50 {statistics.median(joined) * 1000:.1f} ms, "
        f"max {max(joined) * 1000:.1f} ms; deregistration -> removed max {max(left) * 1000:.1f} ms"
    )
    assert max(joined) < 1.5, joined
    assert statistics.median(joined) < 0.5, joined
    assert max(left) < 1.5, left


async def test_weight_change_takes_effect(registry: Registry, backends: dict[str, BackendProcess]) -> None:
    a, b = backends["a"], backends["b"]
    await registry.register("web", a.instance())
    await registry.register("web", b.instance())
    async with serve_gateway(NO_PROBES, settings=registry.settings()) as gw, aiohttp.ClientSession() as http:
        url = f"{gw.url}/web/echo"
        await eventually(lambda: ids(gw, "web"), 5.0, expect={"a", "b"})
        who = await served_by(http, url, 10)
        assert (who.count("a"), who.count("b")) == (5, 5), who
        await registry.register("web", b.instance(weight=4))

        async def weights() -> dict[str, int]:
            info = await get_json(http, f"{gw.url}/services/web/info")
            return {i["id"]: i["weight"] for i in info["instances"]}

        await eventually(weights, 3.0, expect={"a": 1, "b": 4})
        info = await get_json(http, f"{gw.url}/services/web/info")
        assert {i["source"] for i in info["instances"]} == {registry.kind}
        who = await served_by(http, url, 25)
        assert (who.count("a"), who.count("b")) == (5, 20), who  # smooth weighted round robin, 1:4
        await registry.deregister("web", "a")
        await eventually(lambda: ids(gw, "web"), 3.0, expect={"b"})
        assert set(await served_by(http, url, 10)) == {"b"}


DISCOVERY_ONLY = {
    "defaults": {
        "health_check": {"path": None},
        "retry": {"max_retries": 0},
        "outlier": {"consecutive_failures": 0},
    }
}


@pytest.mark.parametrize("mode", ["defaults", "discovery-only"])
async def test_crashed_instance_stops_receiving_requests_within_ttl_plus_1s(
    ttl_registry: Registry, backends: dict[str, BackendProcess], mode: str
) -> None:
    """Kill a heartbeating registration process and its backend; the gateway stops routing to it.

    ``defaults``: retries and passive ejection are on, so no client request fails.
    ``discovery-only``: both off, so discovery alone takes the dead instance out of routing.
    """
    ttl = 1.0
    config = NO_PROBES if mode == "defaults" else DISCOVERY_ONLY
    await ttl_registry.register("web", backends["a"].instance())
    with BackendProcess("crash") as crash:
        async with (
            serve_gateway(config, settings=ttl_registry.settings()) as gw,
            aiohttp.ClientSession() as http,
        ):
            with ttl_registry.heartbeat_process("web", crash.instance(), ttl) as beating:
                async with Traffic(http, f"{gw.url}/web/echo") as traffic:
                    await traffic.wait_for(by("crash"), since=0.0, timeout=10.0)
                    await asyncio.sleep(2 * ttl)
                    recent = traffic.since(time.perf_counter() - ttl / 2)
                    assert "crash" in {h.instance for h in recent}, "heartbeats keep it past its TTL"
                    clock = AttemptClock(gw, "web")
                    try:
                        killed = time.perf_counter()
                        beating.kill()
                        crash.kill()
                        await eventually(lambda: "crash" in ids(gw, "web"), ttl + 3.0, expect=False)
                        removed = time.perf_counter()
                        attempts_at_removal = clock.count()
                        await traffic.wait_count(since=removed, count=50, timeout=5.0)
                        assert clock.count() == attempts_at_removal, "no attempt reaches a removed instance"
                    finally:
                        await clock.aclose()
    after_kill = traffic.since(killed)
    failed = [h for h in after_kill if h.status != 200]
    last = (clock.last_growth or killed) - killed
    print(
        f"\n{ttl_registry.kind} ({mode}): crash (TTL {ttl:g} s) -> last attempt routed to it "
        f"{last:.2f} s later, removed from the snapshot after {removed - killed:.2f} s; "
        f"{len(failed)} of {len(after_kill)} client requests failed"
    )
    assert clock.last_growth is not None, "traffic did reach the dead instance after the kill"
    assert last <= ttl + 1.0
    assert removed - killed <= ttl + 1.5
    assert all(h.instance == "a" for h in traffic.since(removed))
    if mode == "defaults":
        assert failed == [], "idempotent requests are retried on the live instance"


async def test_registry_outage_start_down_then_up_then_killed_mid_traffic_then_back(
    registry: Registry, backends: dict[str, BackendProcess]
) -> None:
    a, b, c = backends["a"], backends["b"], backends["c"]
    kind = registry.kind
    await registry.down()
    async with serve_gateway(NO_PROBES, settings=registry.settings()) as gw, aiohttp.ClientSession() as http:
        async with http.get(f"{gw.url}/health/ready") as r:
            body = await r.json()
            assert r.status == 503, body
        assert body["reason"].startswith("registry not loaded: "), body
        assert len(body["reason"]) > len("registry not loaded: ") + 5, "the reason names the failure"

        await registry.up()
        came_up = time.perf_counter()
        await registry.register("web", a.instance())
        await registry.register("web", b.instance())

        async def ready_status() -> int:
            async with http.get(f"{gw.url}/health/ready") as r:
                return r.status

        ready_after = await eventually(ready_status, 10.0, expect=200)
        # Ready means "the registry was read once", which may be before both registrations were:
        # wait until they are in the routing table, so that every request below must succeed.
        await eventually(lambda: ids(gw, "web"), 10.0, expect={"a", "b"})

        async with Traffic(http, f"{gw.url}/web/echo") as traffic:
            for name in ("a", "b"):
                await traffic.wait_for(by(name), since=came_up, timeout=5.0)
            success_before = await metric_value(
                http, gw.url, "gateway_discovery_last_success_timestamp_seconds", kind
            )
            killed = time.perf_counter()
            await registry.down()

            async def discovery_up() -> bool:
                return bool((await get_json(http, f"{gw.url}/health/"))["discovery"]["up"])

            noticed = await eventually(discovery_up, 10.0, expect=False)
            await traffic.wait_count(since=time.perf_counter(), count=40, timeout=5.0)
            during = traffic.since(killed)
            assert traffic.failures() == [], "the last known instances keep serving"
            assert {h.instance for h in during} == {"a", "b"}
        health = await get_json(http, f"{gw.url}/health/")
        assert health["status"] == "degraded"
        assert health["discovery"]["provider"] == kind
        assert health["discovery"]["last_error"]
        assert health["ready"] is True, "an outage after loading does not make the gateway unready"
        assert await metric_value(http, gw.url, "gateway_discovery_up", kind) == 0.0

        await registry.up()
        for backend in (a, b, c):  # Redis restarts empty; registering again is idempotent elsewhere
            await registry.register("web", backend.instance())

        async def answering() -> set[str]:
            return set(await served_by(http, f"{gw.url}/web/echo", 9))

        recovered = await eventually(answering, 15.0, expect={"a", "b", "c"})
        assert await metric_value(http, gw.url, "gateway_discovery_up", kind) == 1.0
        success_after = await metric_value(
            http, gw.url, "gateway_discovery_last_success_timestamp_seconds", kind
        )
        assert success_before is not None
        assert success_after is not None
        assert success_after > success_before
    print(
        f"\n{kind} outage: ready {ready_after:.2f} s after the registry came up; outage noticed after "
        f"{noticed:.2f} s; {len(during)} requests served during it, none failed; a new registration "
        f"routed {recovered:.2f} s after the registry came back"
    )


async def test_two_gateway_processes_on_one_redis_both_route_a_new_registration_within_1s(
    redis_server: RedisServer, backends: dict[str, BackendProcess]
) -> None:
    a, b = backends["a"], backends["b"]
    async with RedisRegistry.running(redis_server) as registry:
        await registry.register("web", a.instance())
        env = registry.env()
        with gateway_process(NO_PROBES, **env) as gw1, gateway_process(NO_PROBES, **env) as gw2:
            urls = [f"{gw1.url}/web/echo", f"{gw2.url}/web/echo"]
            async with aiohttp.ClientSession() as http:
                for url in urls:
                    await eventually(functools.partial(served_by, http, url, 2), 15.0, expect=["a", "a"])

                async def first_b(url: str, since: float) -> float:
                    while time.perf_counter() < since + 5.0:
                        if await served_by(http, url, 1) == ["b"]:
                            return time.perf_counter() - since
                    raise AssertionError(f"{url} never routed to b")

                t0 = time.perf_counter()
                await registry.register("web", b.instance())
                lags = await asyncio.gather(*(first_b(url, t0) for url in urls))
    print(
        f"\ntwo gateway processes: new registration routed after {lags[0] * 1000:.0f} / {lags[1] * 1000:.0f} ms"
    )
    assert max(lags) < 1.0, lags


async def test_bad_data_is_skipped_and_good_instances_keep_serving(
    registry: Registry, backends: dict[str, BackendProcess], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = backends["a"], backends["b"]
    caplog.set_level(logging.WARNING, logger="msa_gateway.discovery")
    await registry.register("web", a.instance())
    async with (
        serve_gateway(NO_PROBES, settings=registry.settings()) as gw,
        aiohttp.ClientSession() as http,
        Traffic(http, f"{gw.url}/web/echo") as traffic,
    ):
        await traffic.wait_for(by("a"), since=0.0, timeout=5.0)
        named = await registry.add_bad_entries("web")
        t0 = time.perf_counter()
        await registry.register("web", b.instance())
        await traffic.wait_for(by("b"), since=t0, timeout=3.0)
        await traffic.wait_count(since=time.perf_counter(), count=20, timeout=3.0)
        assert traffic.failures() == [], "bad entries never reach the data plane"
        assert ids(gw, "web") == {"a", "b"}
        health = await get_json(http, f"{gw.url}/health/")
        assert health["discovery"]["up"] is True, "bad entries never take the provider down"
    warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    for fragment in named:
        assert fragment in warnings, f"no warning names {fragment}:\n{warnings}"
