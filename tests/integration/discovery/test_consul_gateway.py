"""The gateway routing from Consul: real backends, the Consul double, changes and an outage mid-traffic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator

import aiohttp
import pytest

from msa_gateway.discovery.consul import ConsulProvider
from tests.support.backend import BackendProcess
from tests.support.consul_double import ConsulDouble
from tests.support.gateway import serve_gateway

NO_PROBES = {"defaults": {"health_check": {"path": None}}}


@pytest.fixture
def consul() -> Iterator[ConsulDouble]:
    with ConsulDouble() as double:
        yield double


@pytest.fixture
def backends() -> Iterator[tuple[BackendProcess, BackendProcess]]:
    with BackendProcess("a") as a, BackendProcess("b") as b:
        yield a, b


async def served_by(http: aiohttp.ClientSession, url: str, n: int = 12) -> list[str]:
    """Send ``n`` GETs; return who answered each (all must be 200)."""
    who = []
    for _ in range(n):
        async with http.get(url) as r:
            assert r.status == 200, (r.status, await r.text())
            who.append(r.headers["x-backend-instance"])
    return who


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    """Await ``check()`` until it returns True (an AssertionError counts as not yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await check():
                return
        except AssertionError:
            pass
        assert time.monotonic() < deadline, f"not reached within {timeout}s"
        await asyncio.sleep(0.05)


async def test_gateway_follows_consul_and_survives_its_outage(
    consul: ConsulDouble, backends: tuple[BackendProcess, BackendProcess]
) -> None:
    a, b = backends
    consul.register("web", "a", port=a.port, address="127.0.0.1")
    provider = ConsulProvider("127.0.0.1", consul.port, wait=30)
    async with serve_gateway(NO_PROBES, provider=provider) as gw, aiohttp.ClientSession() as http:
        url = f"{gw.url}/web/echo"

        async def only(*names: str) -> bool:
            return set(await served_by(http, url)) == set(names)

        await eventually(lambda: only("a"), 5.0)
        t0 = time.perf_counter()
        check_b = consul.register("web", "b", port=b.port, address="127.0.0.1")
        await eventually(lambda: only("a", "b"), 2.0)
        joined = time.perf_counter() - t0
        check_a = "service:a"
        consul.set_check(check_a, "critical")
        await eventually(lambda: only("b"), 2.0)

        consul.go_down()  # Consul gone: the last known set keeps serving
        for _ in range(5):
            assert set(await served_by(http, url)) == {"b"}
            await asyncio.sleep(0.2)
        async with http.get(f"{gw.url}/metrics") as r:
            assert 'gateway_discovery_up{provider="consul"} 0.0' in await r.text()

        consul.come_back()
        consul.set_check(check_a, "passing")
        consul.set_check(check_b, "passing")
        await eventually(lambda: only("a", "b"), 10.0)
    print(f"\nconsul registration -> first request routed to it: {joined * 1000:.0f} ms")
