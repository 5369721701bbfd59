"""Helpers for tests of ``msa-gateway run --workers N``: scrapes, worker pids, fresh connections."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

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


def children(pid: int) -> list[int]:
    """Return the pids of ``pid``'s child processes."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return sorted(int(p) for p in text.split())
