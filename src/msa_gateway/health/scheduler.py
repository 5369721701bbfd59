"""The probe scheduler: one task that sends every active probe on time, within limits.

It runs the schedule of ``schedule.py`` (each instance at its stable phase, spread evenly), keeps
at most ``ProbeLimits.concurrency`` probes in flight (the rest wait their turn; a probe's timeout
starts when it is sent, never while it waits), and measures what each probe costs in CPU. When
the configured intervals would cost more than ``cpu_budget`` of a core, or the gateway's own
loop keeps running late (``schedule.Budget``), every interval is stretched alike: logged once
when it starts and once when it ends, shown in ``/metrics``.

A probe that timed out while the gateway's own loop was late by ``lag_fraction`` of the
timeout or more (``lag.py``) is not recorded: it is sent again shortly instead, so a stall of
the gateway never marks healthy instances down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from msa_gateway.health.lag import LoopLag
from msa_gateway.health.probe import ProbeResult
from msa_gateway.health.schedule import FIRST_SPREAD, Budget, Schedule, Slot, VirtualClock
from msa_gateway.model import ProbeLimits

if TYPE_CHECKING:
    from msa_gateway.health.active import ProbeTarget

log = logging.getLogger("msa_gateway.health")
REPROBE = 1.0  # seconds (at most one interval) before a probe spoiled by gateway lag is sent again
BUDGET_EVERY = 1.0  # seconds between two budget checks
MAX_SLEEP = 1.0
# ``ProbeResult.cpu`` times the probe's own steps; the event loop's polling and the kernel's socket
# work around them cost about as much again (measured: 1.7-2x on asyncio and uvloop), so the
# budget counts each probe at twice its measured steps.
LOOP_OVERHEAD = 2.0

Probe = Callable[["ProbeTarget"], Awaitable[ProbeResult]]
Record = Callable[["ProbeTarget", ProbeResult], None]


class ProbeScheduler:
    """Probe every target at its phase; ``run`` is the supervised ``health_probe`` task."""

    def __init__(self, limits: ProbeLimits, probe: Probe, record: Record, lag: LoopLag | None = None) -> None:
        self.limits = limits
        self._probe, self._record, self.lag = probe, record, lag
        self.targets: dict[str, ProbeTarget] = {}
        self.schedule = Schedule()
        self.budget = Budget(limits.cpu_budget)
        self.clock = VirtualClock(time.monotonic())
        self.results: Counter[str] = Counter()  # ok, failed, inconclusive
        self.cpu = 0.0  # CPU seconds of every probe so far (estimated: measured steps x LOOP_OVERHEAD)
        self._ready: deque[Slot] = deque()
        self._inflight: set[asyncio.Task[None]] = set()
        self._waiter: asyncio.Future[None] | None = None
        self._crash: Exception | None = None
        self._checked = 0.0
        self._spoiled: list[tuple[str, float]] = []  # (key, lag) of timeouts not counted, logged each second
        self._first_end = 0.0  # (virtual clock) when the first probes of keys added so far are planned to end

    # --- targets -----------------------------------------------------------------------

    def set_targets(self, targets: Mapping[str, ProbeTarget]) -> None:
        """Probe exactly ``targets`` from now on; unchanged ones keep their slot and state."""
        self.update(targets, [k for k in self.targets if k not in targets])

    def update(self, targets: Mapping[str, ProbeTarget], removed: Iterable[str]) -> None:
        """Add or replace ``targets`` and drop ``removed``; the rest keep their slot and state.

        O(changes): a registry swap calls it per service it rebuilt. New keys' first probes
        are spread over the time the budget needs for every key added lately (a leaky bucket),
        so 2,000 calls of 10 new keys spread like one call of 20,000.
        """
        for key in removed:
            if self.targets.pop(key, None) is not None:
                self.schedule.remove(key)
        new = [(k, t) for k, t in targets.items() if self.targets.get(k) != t]
        if not new:
            return
        now = self.clock.advance(time.monotonic())
        backlog = max(0.0, self._first_end - now)
        spread = max(FIRST_SPREAD, backlog + len(new) / self.budget.allowed_rate())
        self._first_end = now + spread
        for key, target in new:
            self.targets[key] = target
            self.schedule.add(key, target.check.interval, now, spread / self.clock.stretch)
        self._wake()

    @property
    def effective_stretch(self) -> float:
        """Return how many times longer than configured every interval is now (1: as configured)."""
        return self.clock.stretch

    @property
    def in_flight(self) -> int:
        """Return how many probes are out now."""
        return len(self._inflight)

    # --- the task ------------------------------------------------------------------------

    async def run(self) -> None:
        """Send probes as they come due until cancelled; raise what a probe's recording raised."""
        loop = asyncio.get_running_loop()
        while True:
            if self._crash is not None:
                crash, self._crash = self._crash, None
                raise crash
            now = time.monotonic()
            if now - self._checked >= BUDGET_EVERY:
                self._checked = now
                self._report_spoiled()
                self._check_budget(now)
            self._ready.extend(self.schedule.due(self.clock.advance(now)))
            self._start_ready(loop)
            nxt = self.schedule.next_due()
            delay = MAX_SLEEP if nxt is None else min(MAX_SLEEP, self.clock.real_delay(nxt))
            if self._ready and len(self._inflight) < self.limits.concurrency:
                delay = 0.0
            await self._sleep(loop, delay)

    async def _sleep(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(delay, self._wake)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _start_ready(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._ready and len(self._inflight) < self.limits.concurrency:
            slot = self._ready.popleft()
            target = self.targets.get(slot.key)
            if target is None or self.schedule.slots.get(slot.key) is not slot:
                continue
            task = loop.create_task(self._one(slot, target))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _one(self, slot: Slot, target: ProbeTarget) -> None:
        started = time.monotonic()
        try:
            result = await self._probe(target)
        finally:
            slot.busy = False
            if self._ready:
                self._wake()
        cpu = result.cpu * LOOP_OVERHEAD
        self.cpu += cpu
        self.budget.observe(cpu)
        if self.targets.get(slot.key) is not target:
            return  # left the registry (or changed) meanwhile
        lag = max(result.lag, self.lag.worst_since(started) if self.lag is not None else 0.0)
        if result.timed_out and lag >= self.limits.lag_fraction * target.check.timeout:
            self.results["inconclusive"] += 1
            self._spoiled.append((slot.key, lag))
            delay = min(REPROBE, target.check.interval)
            self.schedule.again(slot.key, self.clock.advance(time.monotonic()) + delay / self.clock.stretch)
            self._wake()
            return
        self.results["ok" if result.ok else "failed"] += 1
        try:
            self._record(target, result)
        except Exception as exc:
            self._crash = exc
            self._wake()

    def _report_spoiled(self) -> None:
        """Log the timeouts not counted in the last second: one line, however many."""
        if self._spoiled:
            spoiled, self._spoiled = self._spoiled, []
            log.info(
                "health probe timeouts not counted: the gateway itself was late",
                extra={
                    "probes": len(spoiled),
                    "first": [key for key, _ in spoiled[:5]],
                    "lag": round(max(lag for _, lag in spoiled), 3),
                },
            )

    def _check_budget(self, now: float) -> None:
        before = self.clock.stretch
        lag = self.lag.recent(BUDGET_EVERY) if self.lag is not None else 0.0
        if not self.budget.update(self.schedule.rate, lag):
            return
        stretch = self.budget.stretch
        self.clock.set_stretch(now, stretch)
        if (before == 1.0) == (stretch == 1.0):
            return  # a change of degree: /metrics shows it
        extra = {
            "stretch": round(stretch, 2),
            "cpu_stretch": round(self.budget.cpu_stretch, 2),
            "lag_factor": round(self.budget.lag_factor, 2),
            "probes_per_s_configured": round(self.schedule.rate, 1),
            "probes_per_s_now": round(self.schedule.rate / stretch, 1),
            "cpu_per_probe_ms": round(self.budget.cost * 1000, 3),
            "cpu_budget": self.limits.cpu_budget,
            "loop_lag": round(lag, 3),
        }
        if before == 1.0:
            log.warning("health probes slowed down to spare the gateway", extra=extra)
        else:
            log.info("health probes back at their configured intervals", extra=extra)

    async def aclose(self) -> None:
        """Cancel the probes in flight and wait for them."""
        tasks = list(self._inflight)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
