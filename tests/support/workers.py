"""Helpers for tests of ``msa-gateway run --workers N``: scrapes, worker pids, fresh connections."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

TIMEOUT = aiohttp.ClientTimeout(total=10)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@asynccontextmanager
async def fresh_connections() -> AsyncIterator[aiohttp.ClientSession]:
    """Yield a session that opens a new connection per request (the kernel picks a worker each time)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True), timeout=TIMEOUT) as s:
        yield s


async def scrape(session: aiohttp.ClientSession, base: str) -> Samples:
    """Return every sample of one ``/metrics/`` scrape by name and sorted labels."""
    async with session.get(f"{base}/metrics/") as r:
        assert r.status == 200, r.status
        text = await r.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """Return the sum of ``name`` over the samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


async def wait_workers(session: aiohttp.ClientSession, base: str, count: int, timeout: float = 30.0) -> float:
    """Wait until ``count`` workers are connected to the supervisor; return the seconds it took."""
    started = time.monotonic()
    while True:
        try:
            if total(await scrape(session, base), "gateway_workers") == count:
                return time.monotonic() - started
        except (aiohttp.ClientError, AssertionError):
            pass
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{count} workers not up within {timeout}s")
        await asyncio.sleep(0.02)


def worker_pids(log: str) -> dict[int, int]:
    """Return the pid of each worker from the supervisor's ``worker_ready`` lines (the latest wins)."""
    pids = {}
    for line in log.splitlines():
        if '"event":"worker_ready"' in line:
            record = json.loads(line)
            pids[int(record["worker"])] = int(record["pid"])
    return pids


async def first_seen(
    session: aiohttp.ClientSession,
    url: str,
    check: Callable[[Any], bool],
    workers: int,
    timeout: float = 10.0,
) -> dict[str, float]:
    """Poll ``url`` on fresh connections; return when each worker first answered a body ``check`` accepts."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < workers:
        async with session.get(url) as r:
            body = await r.json(content_type=None)
            worker = r.headers["x-gateway-worker"]
        if worker not in seen and check(body):
            seen[worker] = time.monotonic()
        assert time.monotonic() < deadline, f"only workers {sorted(seen)} saw it; last answer {body}"
        await asyncio.sleep(0.005)
    return seen
