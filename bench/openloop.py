"""An open-loop HTTP load generator: requests leave on a fixed schedule, whatever the answers.

A closed-loop client (wrk, ab) waits for an answer before it sends the next request, so a slow
server lowers the request rate instead of showing up as latency. Here every request has a due
time fixed in advance (in its own ``1 / rate`` slot, see ``schedule``), is sent at that time
in a task of its own and carries a unique ``X-Request-ID``. Its latency runs from the due time
to the end of the response: a stalled gateway shows up as latency, and a generator that falls behind its
schedule shows up as ``lag`` (reported separately, so the two can be told apart).

    async with OpenLoop(url, [Stream("GET", "GET", "/svc/x", rate=200)], duration=30) as load:
        task = asyncio.create_task(load.run(), name="load")
        await load.until(10.0)      # ten seconds after the first request was due
        ...inject a fault...
        shots = await task
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from bench.stream import percentile


@dataclass(frozen=True, slots=True)
class Stream:
    """``rate`` requests per second of ``method`` to ``path`` (relative to the base URL)."""

    name: str
    method: str
    path: str
    rate: float
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class Shot:
    """One request and what became of it."""

    stream: str
    request_id: str
    due: float  # seconds after the start at which it was meant to leave
    sent_at: float  # wall clock (time.time()) when it actually left
    finished_at: float  # wall clock when the answer (or the error) was complete
    lag: float  # seconds it left after its due time
    latency: float  # seconds from the due time to the end of the answer
    status: int | None  # None: no HTTP answer, see ``error``
    instance: str | None  # the backend that answered (X-Backend-Instance)
    error: str | None

    @property
    def ok(self) -> bool:
        """Return whether the answer was a 2xx."""
        return self.status is not None and 200 <= self.status < 300

    @property
    def outcome(self) -> str:
        """Return the status code, or the error's name when there was no answer."""
        return str(self.status) if self.status is not None else (self.error or "no answer")


@dataclass(frozen=True, slots=True)
class PhaseStats:
    """Latency and failures of one stream's requests due within one phase."""

    count: int
    ok: int
    p50: float
    p99: float
    max: float

    @property
    def failed(self) -> int:
        """Return how many did not get a 2xx."""
        return self.count - self.ok


def phase_stats(shots: Sequence[Shot], stream: str, start: float, end: float) -> PhaseStats:
    """Summarize the shots of ``stream`` due in ``[start, end)`` seconds."""
    chosen = [s for s in shots if s.stream == stream and start <= s.due < end]
    latencies = [s.latency for s in chosen]
    return PhaseStats(
        count=len(chosen),
        ok=sum(1 for s in chosen if s.ok),
        p50=percentile(latencies, 50) if latencies else 0.0,
        p99=percentile(latencies, 99) if latencies else 0.0,
        max=max(latencies, default=0.0),
    )


def schedule(streams: Sequence[Stream], duration: float, seed: int = 0) -> list[tuple[float, int, int]]:
    """Return ``(due, stream index, sequence number)`` for every request, in due order.

    Request ``i`` of a stream is due at a random point (seeded, so runs repeat) of its own slot
    ``[i / rate, (i + 1) / rate)``: exactly ``rate`` per second, but no fixed order between the
    streams. A strict GET, POST, GET, POST order would meet a round-robin balancer in lockstep
    and send every GET to one instance and every POST to the other.
    """
    rng = random.Random(seed)
    plan: list[tuple[float, int, int]] = []
    for k, stream in enumerate(streams):
        if stream.rate <= 0:
            continue
        step = 1.0 / stream.rate
        count = int(duration * stream.rate)
        plan.extend(((i + rng.random()) * step, k, i) for i in range(count))
    plan.sort()
    return plan


class OpenLoop:
    """Send ``streams`` at their fixed rates for ``duration`` seconds to ``base_url``."""

    def __init__(
        self,
        base_url: str,
        streams: Sequence[Stream],
        duration: float,
        *,
        id_prefix: str = "load",
        request_timeout: float = 15.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.streams = tuple(streams)
        self.duration = duration
        self.id_prefix = id_prefix
        self.request_timeout = request_timeout
        self.shots: list[Shot] = []
        self._t0: float | None = None
        self._started = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> OpenLoop:
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.request_timeout),
            auto_decompress=False,
        )
        # aiohttp re-sends an idempotent request once when a reused connection was closed; that
        # would hide a gateway failure from the count, so every request goes out exactly once.
        self._session._retry_connection = False
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def t0(self) -> float:
        """Return the event-loop time at which the first request was due."""
        if self._t0 is None:
            raise RuntimeError("the load has not started")
        return self._t0

    def elapsed(self) -> float:
        """Return seconds since the start."""
        return asyncio.get_running_loop().time() - self.t0

    async def until(self, offset: float) -> None:
        """Sleep until ``offset`` seconds after the start (at once if that has passed)."""
        await self._started.wait()
        delay = self.t0 + offset - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def run(self) -> list[Shot]:
        """Send every request on schedule, wait for all answers and return the shots in due order."""
        if self._session is None:
            raise RuntimeError("use OpenLoop as an async context manager")
        loop = asyncio.get_running_loop()
        plan = schedule(self.streams, self.duration)
        self._t0 = loop.time() + 0.05
        self._started.set()
        for due, k, i in plan:
            delay = self._t0 + due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            stream = self.streams[k]
            rid = f"{self.id_prefix}-{stream.name.lower()}-{i:06d}"
            task = loop.create_task(self._one(stream, rid, due), name=f"openloop:{rid}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.gather(*list(self._tasks))
        return sorted(self.shots, key=lambda s: s.due)

    async def _one(self, stream: Stream, rid: str, due: float) -> None:
        assert self._session is not None
        loop = asyncio.get_running_loop()
        due_at = self.t0 + due
        lag = loop.time() - due_at
        sent_at = time.time()
        status: int | None = None
        instance: str | None = None
        error: str | None = None
        try:
            async with self._session.request(
                stream.method,
                self.base_url + stream.path,
                data=stream.body,
                headers={"X-Request-ID": rid},
                allow_redirects=False,
            ) as resp:
                await resp.read()
                status = resp.status
                instance = resp.headers.get("X-Backend-Instance")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = type(exc).__name__
        self.shots.append(
            Shot(
                stream=stream.name,
                request_id=rid,
                due=due,
                sent_at=sent_at,
                finished_at=time.time(),
                lag=lag,
                latency=loop.time() - due_at,
                status=status,
                instance=instance,
                error=error,
            )
        )
