"""Event-loop lag: how late the gateway's own loop runs what is due.

A probe that times out while the loop was blocked (a long registry swap, a big scrape, a CPU
starved host) says more about the gateway than about the instance. ``LoopLag.run`` wakes every
``every`` seconds and notes how much later than asked it woke; ``worst_since`` tells the probe
scheduler the largest such delay seen since a probe started, so a timeout that overlaps a stall
is not held against the instance.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

EVERY = 0.05  # seconds between two wake-ups
KEEP = 30.0  # seconds of samples kept (longer than any probe timeout worth trusting)


class LoopLag:
    """Samples of (wake-up time, lateness) of a task that sleeps ``every`` seconds in a loop."""

    def __init__(self, every: float = EVERY, keep: float = KEEP, clock: Callable[[], float] = time.monotonic):
        self.every = every
        self.clock = clock
        self._samples: deque[tuple[float, float]] = deque(maxlen=max(16, int(keep / every)))
        self.worst = 0.0  # largest lateness since start, for /metrics

    def note(self, woke: float, lateness: float) -> None:
        """Record that the loop ran at ``woke`` something due ``lateness`` seconds earlier."""
        lateness = max(0.0, lateness)
        self._samples.append((woke, lateness))
        self.worst = max(self.worst, lateness)

    def worst_since(self, since: float) -> float:
        """Return the largest lateness of the samples taken at or after ``since`` (0 when none)."""
        worst = 0.0
        for woke, lateness in reversed(self._samples):
            if woke < since:
                break
            worst = max(worst, lateness)
        return worst

    def recent(self, seconds: float = 1.0) -> float:
        """Return the largest lateness of the last ``seconds`` seconds."""
        return self.worst_since(self.clock() - seconds)

    async def run(self) -> None:
        """Sleep ``every`` seconds at a time and note how late each wake-up is (a runtime task)."""
        while True:
            asked = self.clock() + self.every
            await asyncio.sleep(self.every)
            woke = self.clock()
            self.note(woke, woke - asked)
