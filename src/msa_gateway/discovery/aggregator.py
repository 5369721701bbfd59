"""Supervise one provider: restart it with capped backoff, keep the last good set, skip repeats.

The aggregator never swaps in an empty set because of an error: when the provider fails, the
last good snapshot keeps serving and ``gateway_discovery_up`` drops to 0. Every outage is
logged once when it starts and once when it ends (with its duration and how many outages the
last minute saw, so flapping shows) and counted in ``gateway_discovery_outages_total``.

After an outage the registry may answer with fewer instances than are alive (restarted empty,
leases expired while cut off): the first reads start a ``Recovery`` (``recovery.py``) that
holds the missing instances for one grace period instead of dropping them at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from msa_gateway.discovery.base import Provider
from msa_gateway.discovery.recovery import Recovery
from msa_gateway.model import Discovered, RecoveryConfig
from msa_gateway.observability.metrics import Metrics

log = logging.getLogger("msa_gateway.discovery")

FLAP_WINDOW = 60.0  # seconds: outages within it are counted in each outage's log lines


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with full jitter."""

    initial: float = 0.2
    maximum: float = 10.0
    factor: float = 2.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Return the pause before retry number ``attempt`` (1-based)."""
        cap = min(self.maximum, self.initial * self.factor ** (attempt - 1))
        return rng.uniform(cap / 2, cap)


class Aggregator:
    """Run ``provider.watch()`` forever and hand every changed snapshot to ``apply``."""

    def __init__(
        self,
        provider: Provider,
        apply: Callable[[Discovered], None],
        metrics: Metrics,
        backoff: Backoff | None = None,
        recovery: RecoveryConfig | None = None,
        update: Callable[[Discovered, Callable[[], None]], Awaitable[None]] | None = None,
    ) -> None:
        self.provider = provider
        self._apply = apply
        self._update = update  # the sliced path for reads (``apply`` serves the grace timer)
        self._metrics = metrics
        self._backoff = backoff or Backoff()
        self.recovery_config = recovery or RecoveryConfig()
        self._rng = random.Random()
        self._raw: Discovered | None = None  # the provider's last read, as read
        self._applied: Discovered | None = None  # the last set handed to ``apply`` (with held ones)
        self.loaded = asyncio.Event()
        self.up = False
        self.last_error: str | None = None
        self.last_success: float | None = None
        self.failures = 0
        self.outages = 0
        self.recovery: Recovery | None = None
        self._recovery_due = False  # the next read is the first after an outage
        self._grace_timer: asyncio.TimerHandle | None = None
        self._up_since = 0.0
        self._down_since: float | None = None  # monotonic start of the current outage
        self._recent: deque[float] = deque()  # monotonic starts of the outages in FLAP_WINDOW
        self._step = 0  # backoff step: grows across flaps, resets once the provider stayed up a while
        metrics.discovery_up.labels(provider.name).set(0)
        metrics.discovery_outages.labels(provider.name)
        metrics.discovery_recovering.labels(provider.name).set(0)
        metrics.discovery_held.labels(provider.name).set(0)

    async def run(self) -> None:
        """Watch, apply, and restart on failure until cancelled."""
        try:
            while True:
                try:
                    async for discovered in self.provider.watch():
                        await self._on_read(discovered)
                    raise RuntimeError("the provider's watch ended")
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._mark_down(str(exc) or type(exc).__name__)
                    await asyncio.sleep(self._backoff.delay(min(self._step, 30), self._rng))
        finally:
            if self._grace_timer is not None:
                self._grace_timer.cancel()

    # --- reads and recovery --------------------------------------------------------------

    async def _on_read(self, discovered: Discovered) -> None:
        self._mark_up()
        self._raw = discovered
        if self._recovery_due:
            self._recovery_due = False
            if self.recovery is None:
                self._begin_recovery()
        recovery = self.recovery
        if recovery is not None:
            if recovery.expired(time.monotonic()):
                self._end_recovery(grace_over=True)
            else:
                discovered = recovery.merge(discovered)
                if not recovery.held:
                    self._end_recovery(grace_over=False)
                else:
                    self._metrics.discovery_held.labels(self.provider.name).set(recovery.held_count)
        if self._update is None:
            self._swap(discovered)
        elif self._fresh(discovered):
            await self._update(discovered, self.loaded.set)  # ready once swapped in
            self.loaded.set()

    def _swap(self, discovered: Discovered) -> None:
        if self._fresh(discovered):
            self._apply(discovered)
            self.loaded.set()

    def _fresh(self, discovered: Discovered) -> bool:
        """Take ``discovered`` as the set applied; return False when it is the one applied last.

        Providers hand unchanged services over as the same tuples, so this is an identity test
        per service, not a comparison of every instance.
        """
        if discovered == self._applied:
            return False
        self._applied = discovered
        return True

    def _begin_recovery(self) -> None:
        if self._applied is None:
            return  # nothing served yet: nothing to hold
        grace = self.recovery_config.resolve(getattr(self.provider, "longest_ttl", None))
        if grace <= 0:
            return
        self.recovery = Recovery(self._applied, time.monotonic(), grace)
        name = self.provider.name
        self._metrics.discovery_recovering.labels(name).set(1)
        self._grace_timer = asyncio.get_running_loop().call_later(grace, self._grace_over)
        log.warning(
            "discovery recovering after an outage: instances missing from its reads are kept "
            "until they re-register or the grace period ends",
            extra={"provider": name, "grace": round(grace, 3)},
        )

    def _grace_over(self) -> None:
        """The timer fired: drop the held instances, unless the provider is down (then at its next read)."""
        self._grace_timer = None
        if self.recovery is not None and self.up and self._raw is not None:
            self._end_recovery(grace_over=True)
            self._swap(self._raw)

    def _end_recovery(self, *, grace_over: bool) -> None:
        recovery = self.recovery
        if recovery is None:
            return
        self.recovery = None
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        name = self.provider.name
        self._metrics.discovery_recovering.labels(name).set(0)
        self._metrics.discovery_held.labels(name).set(0)
        took = round(time.monotonic() - recovery.started, 3)
        if grace_over:
            log.warning(
                "discovery recovery over: instances that did not re-register in the grace period leave",
                extra={"provider": name, "seconds": took, "removed": recovery.held_keys()},
            )
        else:
            log.info(
                "discovery recovery over: every missing instance re-registered",
                extra={"provider": name, "seconds": took},
            )

    def describe(self) -> dict[str, Any] | None:
        """Return the recovery state for ``/health/`` (None when not recovering)."""
        recovery = self.recovery
        return None if recovery is None else dict(recovery.describe(time.monotonic()))

    # --- outages ---------------------------------------------------------------------------

    def _recent_outages(self, now: float) -> int:
        recent = self._recent
        while recent and now - recent[0] > FLAP_WINDOW:
            recent.popleft()
        return len(recent)

    def _mark_down(self, reason: str) -> None:
        """Count a failure; an outage starts (logged and counted once) when the provider was up."""
        name = self.provider.name
        now = time.monotonic()
        if self._down_since is None:
            if self.up and now - self._up_since >= self._backoff.maximum:
                self._step = 0  # it stayed up a while: a new outage starts the backoff afresh
            self._down_since = now
            self._recent.append(now)
            self.outages += 1
            self._metrics.discovery_outages.labels(name).inc()
            log.error(
                "discovery provider failed; keeping the last known instances"
                if self._applied is not None
                else "discovery provider failed; not ready until it answers",
                extra={"provider": name, "error": reason, "outages_last_minute": self._recent_outages(now)},
            )
        self._recovery_due = True
        self.failures += 1
        self._step += 1
        self.up = False
        self.last_error = reason
        self._metrics.discovery_up.labels(name).set(0)

    def _mark_up(self) -> None:
        name = self.provider.name
        now = time.time()
        self.last_success = now
        self._metrics.discovery_last_success.labels(name).set(now)
        if self.up:
            return
        mono = time.monotonic()
        if self._down_since is not None:
            flaps = self._recent_outages(mono)
            log.info(
                "discovery provider recovered" if flaps < 3 else "discovery provider recovered (flapping)",
                extra={
                    "provider": name,
                    "failures": self.failures,
                    "seconds": round(mono - self._down_since, 3),
                    "outages_last_minute": flaps,
                },
            )
            self._down_since = None
        self.up = True
        self.failures = 0
        self._up_since = mono
        self._metrics.discovery_up.labels(name).set(1)
