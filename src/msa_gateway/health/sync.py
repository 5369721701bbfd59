"""Passive ejections shared with other processes: the other workers of the host, other replicas.

Every ``interval`` (0.1 s) ``EjectionSync`` looks at each service's outlier detector and hands
each ejection this process decided (or lengthened) to its sinks: the worker link (``workers/``)
and the shared health hints (``hints.py``). Ejections that arrive from elsewhere go through
``apply``, which only ever ejects or lengthens (never returns an instance to service) and
remembers them, so they are not sent back out. Polling keeps the request path untouched: the
detectors are read, not hooked, whatever made them eject.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from msa_gateway.proxy.resilience import ServiceGuard

Sink = Callable[[str, str, float], None]  # (service, key, seconds left)
INTERVAL = 0.1
SAME = 0.05  # seconds within which two ends of one ejection are the same
MAX_KNOWN = 1024  # past this many remembered keys, expired ones are dropped


class EjectionSync:
    """Send this process's ejections to ``sinks``; apply ejections from elsewhere."""

    def __init__(self, guards: Mapping[str, ServiceGuard], interval: float = INTERVAL) -> None:
        self.guards = guards
        self.interval = interval
        self.sinks: list[Sink] = []
        self._known: dict[str, float] = {}  # key -> the ``until`` last sent or received

    def apply(self, service: str, key: str, remaining: float) -> bool:
        """Eject ``key`` of ``service`` for ``remaining`` seconds as another process decided."""
        guard = self.guards.get(service)
        if guard is None or remaining <= 0:
            return False
        until = time.monotonic() + remaining
        # The same hint read again lands a few ms off: only a real lengthening counts.
        applied = until > guard.outlier.ejected_until(key) + SAME and guard.outlier.eject_until(key, until)
        self._known[key] = guard.outlier.ejected_until(key)
        return applied

    def poll(self) -> list[tuple[str, str, float]]:
        """Return (service, key, seconds left) of each ejection not sent or received yet."""
        now = time.monotonic()
        out = []
        for service, guard in self.guards.items():
            detector = guard.outlier
            for key in detector.ejected_keys(now):
                until = detector.ejected_until(key)
                if until > self._known.get(key, 0.0) + 1e-3:
                    self._known[key] = until
                    out.append((service, key, until - now))
        if len(self._known) > MAX_KNOWN:
            self._known = {k: u for k, u in self._known.items() if u > now}
        return out

    async def run(self) -> None:
        """Poll every ``interval`` and feed the sinks (a runtime background task)."""
        while True:
            for service, key, remaining in self.poll():
                for sink in self.sinks:
                    sink(service, key, remaining)
            await asyncio.sleep(self.interval)
