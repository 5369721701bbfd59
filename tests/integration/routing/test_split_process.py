"""Canary splits with the real ``msa-gateway run`` process and two real backends (v1, v2).

A 5% canary over 10,000 requests lands 5% ± 1%; the canary header always reaches v2; weights
changed by SIGHUP reloads under load fail no request, and the per-target counter adds up.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from tests.integration.routing.test_reload_process import TIMEOUT, get, metric, wait_hash, write
from tests.support.backend import BackendProcess
from tests.support.gateway import GatewayProcess


def config(v1: int, v2: int, weights: tuple[int, int]) -> dict[str, Any]:
    return {
        "gateway": {"reload_interval": 0},
        "defaults": {"health_check": {"path": None}},
        "services": {
            "orders-v1": {"instances": [{"host": "127.0.0.1", "port": v1}]},
            "orders-v2": {"instances": [{"host": "127.0.0.1", "port": v2}]},
        },
        "routes": [
            {
                "name": "orders",
                "path_prefix": "/orders",
                "split": [
                    {"service": "orders-v1", "weight": weights[0]},
                    {"service": "orders-v2", "weight": weights[1]},
                ],
                "match_first": [{"header": {"X-Canary": "1"}, "service": "orders-v2"}],
            }
        ],
    }


@pytest.fixture(scope="module")
def backends() -> Iterator[tuple[BackendProcess, BackendProcess]]:
    with BackendProcess("v1") as v1, BackendProcess("v2") as v2:
        yield v1, v2


async def hammer(
    s: aiohttp.ClientSession, url: str, n: int | None, stop: asyncio.Event, seen: Counter[str]
) -> None:
    """Send requests one after another until ``n`` are done (shared by the workers) or ``stop`` is set."""
    while not stop.is_set() and (n is None or seen.total() < n):
        try:
            async with s.get(url, timeout=TIMEOUT) as r:
                body = await r.read()
                seen[orjson.loads(body)["instance"] if r.status == 200 else f"status {r.status}"] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            seen[type(exc).__name__] += 1


async def test_a_five_percent_canary_over_10000_requests_and_the_canary_header(
    backends: tuple[BackendProcess, BackendProcess],
) -> None:
    v1, v2 = backends
    gw = GatewayProcess(config(v1.port, v2.port, (95, 5))).start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as s:
            seen: Counter[str] = Counter()
            stop = asyncio.Event()
            await asyncio.gather(*(hammer(s, gw.url + "/orders/1", 10_000, stop, seen) for _ in range(32)))
            total = seen.total()
            print(f"\n{total} requests: {dict(seen)} -> canary {seen['v2'] / total:.2%}")
            assert set(seen) == {"v1", "v2"} and total >= 10_000
            assert 0.04 <= seen["v2"] / total <= 0.06
            assert (
                await metric(s, gw, 'gateway_route_split_total{route="orders",service="orders-v2"}')
                == seen["v2"]
            )
            for _ in range(20):
                async with s.get(gw.url + "/orders/1", headers={"X-Canary": "1"}, timeout=TIMEOUT) as r:
                    assert (await r.json())["instance"] == "v2"
            _, health = await get(s, gw.url + "/health/")
            shares = [t["share"] for t in health["config"]["splits"]["orders"]["targets"]]
            assert shares == [0.95, 0.05]
    finally:
        gw.close()


async def test_weights_reloaded_under_load_fail_no_request_and_shift_the_traffic(
    backends: tuple[BackendProcess, BackendProcess],
) -> None:
    v1, v2 = backends
    gw = GatewayProcess(config(v1.port, v2.port, (95, 5))).start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as s:
            seen: Counter[str] = Counter()
            stop = asyncio.Event()
            workers = [
                asyncio.create_task(hammer(s, gw.url + "/orders/x", None, stop, seen)) for _ in range(32)
            ]
            started = time.monotonic()
            for weights in [(50, 50), (5, 95), (1, 99), (95, 5), (99, 1), (50, 50)]:
                digest = write(gw.config_path, config(v1.port, v2.port, weights))
                os.kill(gw.pid(), signal.SIGHUP)
                await wait_hash(s, gw, digest)
                await asyncio.sleep(0.2)  # load between reloads
            last = seen.copy()
            await asyncio.sleep(1.0)  # the last weights (50/50) on their own
            stop.set()
            await asyncio.gather(*workers)
            elapsed = time.monotonic() - started
        rate = seen.total() / elapsed
        print(f"\n{seen.total()} requests in {elapsed:.2f}s ({rate:.0f}/s) over 6 reloads: {dict(seen)}")
        assert set(seen) == {"v1", "v2"}, seen  # no status but 200, no client error
        tail = seen - last
        assert 0.35 <= tail["v2"] / tail.total() <= 0.65, tail  # 50/50 after the last reload
    finally:
        gw.close()
