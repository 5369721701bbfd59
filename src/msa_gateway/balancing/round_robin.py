"""Round robin, plain and weighted (nginx's smooth weighted round robin)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

from msa_gateway.model import Instance


class WeightedRoundRobin:
    """Smooth weighted round robin: over any window of sum(weights) picks, each instance gets its weight.

    State is rebuilt whenever the eligible set changes (compared by identity first, then by value).
    """

    name: ClassVar[str] = "weighted_round_robin"
    __slots__ = ("_current", "_eligible", "_total", "_weights")

    @classmethod
    def create(cls, load: Callable[[Instance], int]) -> WeightedRoundRobin:
        """Return a new balancer (it does not look at load)."""
        return cls()

    def __init__(self) -> None:
        self._eligible: Sequence[Instance] = ()
        self._weights: list[int] = []
        self._current: list[int] = []
        self._total = 0

    def _reset(self, eligible: Sequence[Instance]) -> None:
        self._eligible = eligible
        self._weights = [max(1, i.weight) for i in eligible]
        self._current = [0] * len(eligible)
        self._total = sum(self._weights)

    def pick(self, eligible: Sequence[Instance]) -> Instance:
        """Return the instance with the highest current weight, then lower it by the total."""
        if eligible is not self._eligible and eligible != self._eligible:
            self._reset(eligible)
        self._eligible = eligible
        current, weights = self._current, self._weights
        best = 0
        for i, w in enumerate(weights):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return eligible[best]

    def done(self, instance: Instance) -> None:
        """Do nothing: round robin keeps no per-request state."""


class RoundRobin:
    """Round robin; falls back to smooth weighted round robin when weights differ."""

    name: ClassVar[str] = "round_robin"
    __slots__ = ("_counter", "_seen", "_weighted")

    @classmethod
    def create(cls, load: Callable[[Instance], int]) -> RoundRobin:
        """Return a new balancer (it does not look at load)."""
        return cls()

    def __init__(self) -> None:
        self._counter = 0
        self._weighted = WeightedRoundRobin()
        # whether the last set seen had one weight: the same set object comes on every request
        # until health or the registry changes, so the O(n) check is not made per request
        self._seen: tuple[Sequence[Instance] | None, bool] = (None, True)

    def pick(self, eligible: Sequence[Instance]) -> Instance:
        """Return the next instance in turn; N picks over k instances give each N/k +- 1."""
        seen, uniform = self._seen
        if seen is not eligible:
            first = eligible[0].weight
            uniform = all(inst.weight == first for inst in eligible)
            self._seen = (eligible, uniform)
        if not uniform:
            return self._weighted.pick(eligible)
        n = self._counter
        self._counter = n + 1
        return eligible[n % len(eligible)]

    def done(self, instance: Instance) -> None:
        """Do nothing: round robin keeps no per-request state."""
