"""Active health checks: every instance with a health path, probed by one scheduler task.

A probe is an HTTP GET of the instance's health path; any 2xx/3xx within the timeout passes
(``probe.py``). ``scheduler.py`` decides when (stable phases, bounded concurrency, a CPU budget,
no verdict from a probe the gateway's own lag spoiled). Results go only to the health table,
which outlives snapshots.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from msa_gateway.health.lag import LoopLag
from msa_gateway.health.probe import HttpProber, ProbeResult
from msa_gateway.health.scheduler import ProbeScheduler
from msa_gateway.health.table import HealthTable
from msa_gateway.model import HealthCheck, Instance, ProbeLimits
from msa_gateway.tasks import Supervised, Supervisor

__all__ = ["ActiveHealthChecker", "ProbeResult", "ProbeTarget"]


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """What to probe for one instance; a change gives it a new schedule entry (same phase)."""

    service: str
    key: str
    instance: Instance
    path: str
    check: HealthCheck


class ActiveHealthChecker:
    """Probe every instance that has a health path, at its service's interval."""

    def __init__(
        self,
        table: HealthTable,
        on_result: Callable[[ProbeTarget, ProbeResult], None] | None = None,
        *,
        tasks: Supervisor | None = None,
        limits: ProbeLimits | None = None,
        lag: LoopLag | None = None,
    ) -> None:
        self._table = table
        self._supervisor = tasks or Supervisor()
        self._on_result = on_result
        self.limits = limits or ProbeLimits()
        self.lag = lag
        self.prober = HttpProber()
        self.scheduler = ProbeScheduler(self.limits, self._probe_target, self.record, lag)
        self._task: Supervised | None = None

    async def probe(self, instance: Instance, path: str, timeout: float) -> ProbeResult:
        """Probe ``instance`` once now."""
        return await self.prober.probe(instance, path, timeout)

    async def _probe_target(self, target: ProbeTarget) -> ProbeResult:
        return await self.prober.probe(target.instance, target.path, target.check.timeout)

    def update(self, targets: Mapping[str, ProbeTarget], removed: Iterable[str]) -> None:
        """Start (or restart, when changed) the probes of ``targets`` and stop those of ``removed``.

        A swap calls it for the services it rebuilt only; unchanged ones keep their phase.
        """
        self.scheduler.update(targets, removed)
        if targets and self._task is None:
            self._task = self._supervisor.spawn("health_probe", self.scheduler.run)

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

    @property
    def running(self) -> int:
        """Return how many instances are being probed."""
        return len(self.scheduler.targets)

    async def aclose(self) -> None:
        """Stop the scheduler and every probe in flight."""
        if self._task is not None:
            await self._task.stop()
            self._task = None
        await self.scheduler.aclose()
