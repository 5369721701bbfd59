"""Active health checks: one named probe task per instance, reconciled after every swap.

A probe is an HTTP GET of the instance's health path; any 2xx/3xx within the timeout passes.
Results go only to the health table, which outlives snapshots.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import aiohttp

from msa_gateway.health.table import HealthTable
from msa_gateway.model import HealthCheck, Instance
from msa_gateway.tasks import Supervised, Supervisor

log = logging.getLogger("msa_gateway.health")


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """What to probe for one instance; a change restarts its task."""

    service: str
    key: str
    instance: Instance
    path: str
    check: HealthCheck


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one probe."""

    ok: bool
    status: int | None
    latency_ms: float
    error: str | None = None


class ActiveHealthChecker:
    """Probe every instance that has a health path, at its service's interval."""

    def __init__(
        self,
        table: HealthTable,
        on_result: Callable[[ProbeTarget, ProbeResult], None] | None = None,
        *,
        tasks: Supervisor | None = None,
    ) -> None:
        self._table = table
        self._supervisor = tasks or Supervisor()
        self._tasks: dict[str, tuple[ProbeTarget, Supervised]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._rng = random.Random()
        self._on_result = on_result

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, force_close=True),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
            )
        return self._session

    async def probe(self, instance: Instance, path: str, timeout: float) -> ProbeResult:
        """Probe ``instance`` once now."""
        started = time.perf_counter()
        try:
            async with self._client().get(
                instance.base_url + path,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
                headers={"User-Agent": "msa-gateway-health"},
            ) as resp:
                await resp.read()
                ok = 200 <= resp.status < 400
                return ProbeResult(
                    ok,
                    resp.status,
                    (time.perf_counter() - started) * 1000,
                    None if ok else f"status {resp.status}",
                )
        except TimeoutError:
            return ProbeResult(False, None, (time.perf_counter() - started) * 1000, "timeout")
        except (aiohttp.ClientError, OSError) as exc:
            reason = (
                "connection refused" if isinstance(exc, aiohttp.ClientConnectorError) else type(exc).__name__
            )
            return ProbeResult(False, None, (time.perf_counter() - started) * 1000, reason)

    def reconcile(self, targets: Mapping[str, ProbeTarget]) -> None:
        """Start probes for new targets, stop removed ones, keep unchanged ones running."""
        for key in [k for k in self._tasks if k not in targets or targets[k] != self._tasks[k][0]]:
            _, task = self._tasks.pop(key)
            task.cancel()
        for key, target in targets.items():
            if key not in self._tasks:
                task = self._supervisor.spawn("health_probe", functools.partial(self._loop, target), key=key)
                self._tasks[key] = (target, task)

    def update(self, targets: Mapping[str, ProbeTarget], removed: Iterable[str]) -> None:
        """Start (or restart, when changed) the probes of ``targets`` and stop those of ``removed``.

        ``reconcile`` for a part of the registry: a swap calls it for the services it rebuilt only.
        """
        for key in removed:
            entry = self._tasks.pop(key, None)
            if entry is not None:
                entry[1].cancel()
        for key, target in targets.items():
            entry = self._tasks.get(key)
            if entry is not None:
                if entry[0] == target:
                    continue
                entry[1].cancel()
            task = self._supervisor.spawn("health_probe", functools.partial(self._loop, target), key=key)
            self._tasks[key] = (target, task)

    def record(self, target: ProbeTarget, result: ProbeResult) -> None:
        """Write one probe result to the table."""
        self._table.record(
            target.service,
            target.key,
            result.ok,
            healthy_threshold=target.check.healthy_threshold,
            unhealthy_threshold=target.check.unhealthy_threshold,
            now=time.time(),
            latency_ms=result.latency_ms,
            error=result.error,
        )
        if self._on_result is not None:
            self._on_result(target, result)

    async def _loop(self, target: ProbeTarget) -> None:
        check = target.check
        await asyncio.sleep(self._rng.uniform(0, min(check.interval, 0.2)))
        while True:
            result = await self.probe(target.instance, target.path, check.timeout)
            self.record(target, result)
            await asyncio.sleep(check.interval)

    @property
    def running(self) -> int:
        """Return how many probe tasks run."""
        return len(self._tasks)

    async def aclose(self) -> None:
        """Stop every probe and close the probe client."""
        tasks = [t for _, t in self._tasks.values()]
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*(t.stop() for t in tasks))
        if self._session is not None:
            await self._session.close()
