"""Supervise one provider: restart it with capped backoff, keep the last good set, skip repeats.

The aggregator never swaps in an empty set because of an error: when the provider fails, the
last good snapshot keeps serving, ``gateway_discovery_up`` drops to 0 and the outage is logged
once; when it recovers, that is logged once too.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from msa_gateway.discovery.base import Provider
from msa_gateway.model import Discovered
from msa_gateway.observability.metrics import Metrics

log = logging.getLogger("msa_gateway.discovery")


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
    ) -> None:
        self.provider = provider
        self._apply = apply
        self._metrics = metrics
        self._backoff = backoff or Backoff()
        self._rng = random.Random()
        self._last: Discovered | None = None
        self.loaded = asyncio.Event()
        self.up = False
        self.last_error: str | None = None
        self.last_success: float | None = None
        self.failures = 0
        self._up_since = 0.0
        self._step = 0  # backoff step: grows across flaps, resets once the provider stayed up a while
        self._outage_logged = False
        self._recovery_logged = False
        metrics.discovery_up.labels(provider.name).set(0)

    async def run(self) -> None:
        """Watch, apply, and restart on failure until cancelled."""
        while True:
            try:
                async for discovered in self.provider.watch():
                    self._mark_up()
                    if discovered == self._last:
                        continue
                    self._last = discovered
                    self._apply(discovered)
                    self.loaded.set()
                raise RuntimeError("the provider's watch ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._mark_down(str(exc) or type(exc).__name__)
                await asyncio.sleep(self._backoff.delay(min(self._step, 30), self._rng))

    def _mark_down(self, reason: str) -> None:
        """Count a failure; log it once per outage (a flap shortly after recovering is the same outage)."""
        name = self.provider.name
        now = time.monotonic()
        stable = self.up and now - self._up_since >= self._backoff.maximum
        if stable or not self._outage_logged:
            self._step = 0
            self._outage_logged = True
            self._recovery_logged = False
            log.error(
                "discovery provider failed; keeping the last known instances"
                if self._last is not None
                else "discovery provider failed; not ready until it answers",
                extra={"provider": name, "error": reason},
            )
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
        if not self.up:
            if self._outage_logged and not self._recovery_logged:
                log.info("discovery provider recovered", extra={"provider": name, "failures": self.failures})
                self._recovery_logged = True
            self.up = True
            self.failures = 0
            self._up_since = time.monotonic()
            self._metrics.discovery_up.labels(name).set(1)
