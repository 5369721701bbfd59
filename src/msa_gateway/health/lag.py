"""Event-loop lag: how late the gateway's own loop runs what is due.

A probe that times out while the loop was blocked (a long registry swap, a big scrape, a CPU
starved host) says more about the gateway than about the instance. ``LoopLag.run`` wakes every
``every`` seconds and notes how much later than asked it woke; ``worst_since`` tells the probe
scheduler the largest such delay seen since a probe started, so a timeout that overlaps a stall
is not held against the instance.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from collections.abc import Callable

EVERY = 0.05  # seconds between two wake-ups
KEEP = 30.0  # seconds of samples kept (longer than any probe timeout worth trusting)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)  # for the /metrics histogram


class LoopLag:
    """Samples of (wake-up time, lateness) of a task that sleeps ``every`` seconds in a loop."""

    def __init__(self, every: float = EVERY, keep: float = KEEP, clock: Callable[[], float] = time.monotonic):
        self.every = every
        self.clock = clock
        self._samples: deque[tuple[float, float]] = deque(maxlen=max(16, int(keep / every)))
        self.worst = 0.0  # largest lateness since start
        self.counts = [0] * (len(BUCKETS) + 1)  # samples per bucket (the last: above every bound)
        self.total = 0.0  # sum of every lateness noted
        self._due: float | None = None  # when the running sleep should end

    def note(self, woke: float, lateness: float) -> None:
        """Record that the loop ran at ``woke`` something due ``lateness`` seconds earlier."""
        lateness = max(0.0, lateness)
        self._samples.append((woke, lateness))
        self.worst = max(self.worst, lateness)
        self.counts[bisect.bisect_left(BUCKETS, lateness)] += 1
        self.total += lateness

    def pending(self) -> float:
        """Return how late the monitor is right now: a stall that just ended has no sample yet."""
        return 0.0 if self._due is None else max(0.0, self.clock() - self._due)

    def worst_since(self, since: float) -> float:
        """Return the largest lateness seen since ``since``, the one still pending included."""
        worst = self.pending()
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
            self._due = asked = self.clock() + self.every
            await asyncio.sleep(self.every)
            woke = self.clock()
            self.note(woke, woke - asked)
