"""Least request by the power of two choices (Envoy's default for least_request)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from msa_gateway.model import Instance


class LeastRequest:
    """Sample two eligible instances, send to the one with fewer requests in flight (weight-scaled)."""

    name = "least_request"
    __slots__ = ("_active", "_rng")

    def __init__(self) -> None:
        self._active: dict[str, int] = {}
        self._rng = random.Random()

    def active(self, instance: Instance) -> int:
        """Return how many requests picked for ``instance`` have not ended."""
        return self._active.get(instance.id, 0)

    def pick(self, eligible: Sequence[Instance]) -> Instance:
        """Return the less loaded of two random instances."""
        if len(eligible) == 1:
            chosen = eligible[0]
        else:
            a, b = self._rng.sample(range(len(eligible)), 2)
            ia, ib = eligible[a], eligible[b]
            la = (self._active.get(ia.id, 0) + 1) / max(1, ia.weight)
            lb = (self._active.get(ib.id, 0) + 1) / max(1, ib.weight)
            chosen = ia if la <= lb else ib
        self._active[chosen.id] = self._active.get(chosen.id, 0) + 1
        return chosen

    def done(self, instance: Instance) -> None:
        """Count the end of a request sent to ``instance``."""
        n = self._active.get(instance.id, 0) - 1
        if n > 0:
            self._active[instance.id] = n
        else:
            self._active.pop(instance.id, None)
