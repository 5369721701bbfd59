"""Client-side traffic through the gateway for discovery tests: who answered, when, and what failed.

``Traffic`` sends GETs back to back in a named task, each with its own ``X-Request-ID``, and keeps
one ``Hit`` per answer; helpers poll for conditions and read the gateway's JSON endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from tests.support.gateway import InProcessGateway

TIMEOUT = aiohttp.ClientTimeout(total=5.0)


@dataclass(frozen=True, slots=True)
class Hit:
    """One answered (or failed) request: perf_counter times, status (0: no answer) and answering backend."""

    request_id: str
    sent: float
    done: float
    status: int
    instance: str | None


class Traffic:
    """Send GETs to ``url`` one after another until the block ends; keep every ``Hit``."""

    def __init__(self, session: aiohttp.ClientSession, url: str, pause: float = 0.002) -> None:
        self.session = session
        self.url = url
        self.pause = pause
        self.hits: list[Hit] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sent = 0

    async def __aenter__(self) -> Traffic:
        self._task = asyncio.create_task(self._run(), name=f"test-traffic:{self.url}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            self._sent += 1
            rid = f"traffic-{id(self):x}-{self._sent}"
            sent = time.perf_counter()
            try:
                async with self.session.get(self.url, headers={"X-Request-ID": rid}, timeout=TIMEOUT) as r:
                    await r.read()
                    hit = Hit(rid, sent, time.perf_counter(), r.status, r.headers.get("x-backend-instance"))
            except (aiohttp.ClientError, TimeoutError):
                hit = Hit(rid, sent, time.perf_counter(), 0, None)
            self.hits.append(hit)
            self._arrived.set()
            await asyncio.sleep(self.pause)

    def since(self, moment: float) -> list[Hit]:
        """Return the hits sent at or after ``moment`` (a ``perf_counter`` value)."""
        return [h for h in self.hits if h.sent >= moment]

    def failures(self) -> list[Hit]:
        """Return every hit that was not a 200."""
        return [h for h in self.hits if h.status != 200]

    async def wait_for(self, pred: Callable[[Hit], bool], since: float, timeout: float) -> Hit:
        """Return the first hit sent at or after ``since`` that satisfies ``pred``."""
        deadline = time.perf_counter() + timeout
        checked = 0
        while True:
            for i in range(checked, len(self.hits)):
                hit = self.hits[i]
                if hit.sent >= since and pred(hit):
                    return hit
            checked = len(self.hits)
            await self._next(deadline, f"no matching request within {timeout}s; last: {self.hits[-3:]}")

    async def wait_count(self, since: float, count: int, timeout: float) -> list[Hit]:
        """Wait until ``count`` hits were sent at or after ``since``; return them."""
        deadline = time.perf_counter() + timeout
        while len(hits := self.since(since)) < count:
            await self._next(deadline, f"only {len(hits)} of {count} requests within {timeout}s")
        return hits

    async def _next(self, deadline: float, message: str) -> None:
        if self._task is not None and self._task.done():
            self._task.result()
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise AssertionError(message)
        self._arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), remaining)


class AttemptClock:
    """Sample the gateway's upstream error count every 2 ms; remember when it last grew.

    The only instance that can fail is the killed one, so each increment is one attempt routed to it.
    """

    def __init__(self, gw: InProcessGateway, service: str) -> None:
        self.gw, self.service = gw, service
        self.last_growth: float | None = None
        self._task = asyncio.create_task(self._run(), name="test-attempt-clock")

    def count(self) -> float:
        return sum(
            s.value
            for m in self.gw.runtime.metrics.upstream_errors.collect()
            for s in m.samples
            if s.name.endswith("_total") and s.labels.get("service") == self.service
        )

    async def _run(self) -> None:
        seen = self.count()
        while True:
            await asyncio.sleep(0.002)
            now = self.count()
            if now > seen:
                seen, self.last_growth = now, time.perf_counter()

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def by(instance: str) -> Callable[[Hit], bool]:
    """Return a predicate: the hit was answered by backend ``instance``."""
    return lambda hit: hit.instance == instance


async def eventually(check: Callable[[], Any], timeout: float, expect: Any = True) -> float:
    """Poll ``check()`` (sync or async) until it returns ``expect``; return the seconds it took.

    An ``AssertionError`` or a connection error inside ``check`` counts as "not yet".
    """
    started = time.perf_counter()
    deadline = started + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if inspect.isawaitable(last):
                last = await last
            if last == expect:
                return time.perf_counter() - started
        except (AssertionError, aiohttp.ClientError) as exc:
            last = exc
        if time.perf_counter() > deadline:
            raise AssertionError(f"not {expect!r} within {timeout}s; last: {last!r}")
        await asyncio.sleep(0.01)


async def served_by(session: aiohttp.ClientSession, url: str, n: int) -> list[str]:
    """Send ``n`` GETs one by one; return the backend that answered each (each must be a 200)."""
    who = []
    for _ in range(n):
        async with session.get(url, timeout=TIMEOUT) as r:
            body = await r.read()
            assert r.status == 200, (r.status, body[:300])
            who.append(r.headers["x-backend-instance"])
    return who


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    """GET ``url`` and return its JSON body (any status)."""
    async with session.get(url, timeout=TIMEOUT) as r:
        return await r.json(content_type=None)


async def metric_value(session: aiohttp.ClientSession, base: str, name: str, provider: str) -> float | None:
    """Return the value of ``name{provider="..."}`` on the gateway's ``/metrics``, or None."""
    async with session.get(f"{base}/metrics", timeout=TIMEOUT) as r:
        text = await r.text()
    prefix = f'{name}{{provider="{provider}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return None
