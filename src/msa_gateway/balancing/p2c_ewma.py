"""Power of two choices over peak-EWMA latency, as Finagle and Linkerd balance.

Each instance has a cost: a moving average of its latencies that jumps to a new peak at once
and otherwise decays towards newer observations with time constant ``decay``. Reading the cost
observes a latency of zero first, so an instance that gets no traffic (because it was slow)
becomes cheap again within a few ``decay`` periods and is probed anew. The score of an
instance is cost x (requests in flight + 1) / weight; of two random instances the lower wins.
An instance never observed scores by its requests in flight times a large penalty, so new
instances are tried, but not all at once.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from typing import ClassVar

from msa_gateway.model import BalancerOptions, Instance

PENALTY = 1.0  # seconds: the cost of an instance never observed, per request in flight to it


class _Ewma:
    """One instance's peak EWMA latency (seconds) and when it was last updated."""

    __slots__ = ("cost", "stamp")

    def __init__(self) -> None:
        self.cost = 0.0
        self.stamp = 0.0  # 0.0: never observed

    def update(self, rtt: float, now: float, decay: float) -> None:
        if rtt > self.cost:
            self.cost = rtt  # peak: a slower answer counts in full at once
        else:
            w = math.exp(-max(now - self.stamp, 0.0) / decay)
            self.cost = self.cost * w + rtt * (1.0 - w)
        self.stamp = now


class P2CEwma:
    """Pick the lower of two random instances' peak-EWMA latency x (in flight + 1) / weight."""

    name: ClassVar[str] = "p2c_ewma"
    __slots__ = ("_decay", "_load", "_rng", "_stats")

    def __init__(self, load: Callable[[Instance], int], decay: float = 10.0) -> None:
        self._load = load
        self._decay = decay
        self._rng = random.Random()
        self._stats: dict[int, _Ewma] = {}  # by id(instance): the snapshot keeps its instances alive

    @classmethod
    def create(cls, load: Callable[[Instance], int]) -> P2CEwma:
        """Return a balancer with the default decay (10 s)."""
        return cls(load)

    @classmethod
    def configured(cls, load: Callable[[Instance], int], options: BalancerOptions) -> P2CEwma:
        """Return a balancer with the service's ``balancer_options.decay``."""
        return cls(load, options.decay)

    def _stat(self, instance: Instance) -> _Ewma:
        stat = self._stats.get(id(instance))
        if stat is None:
            stat = self._stats[id(instance)] = _Ewma()
        return stat

    def score(self, instance: Instance, now: float) -> float:
        """Return the instance's current score (lower is better); decays an idle instance's cost."""
        stat = self._stat(instance)
        pending = self._load(instance)
        if not stat.stamp:
            return (PENALTY * pending) / max(1, instance.weight)
        stat.update(0.0, now, self._decay)
        return stat.cost * (pending + 1) / max(1, instance.weight)

    def pick(self, eligible: Sequence[Instance]) -> Instance:
        """Return the better of two random instances."""
        if len(eligible) == 1:
            return eligible[0]
        a, b = self._rng.sample(range(len(eligible)), 2)
        ia, ib = eligible[a], eligible[b]
        now = time.monotonic()
        return ia if self.score(ia, now) <= self.score(ib, now) else ib

    def observe(self, instance: Instance, seconds: float) -> None:
        """Fold one attempt's latency into the instance's cost."""
        self._stat(instance).update(seconds, time.monotonic(), self._decay)

    def done(self, instance: Instance) -> None:
        """Do nothing: the caps count the end of the request."""
