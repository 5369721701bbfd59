"""Least request by the power of two choices (Envoy's default for least_request)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import ClassVar

from msa_gateway.model import Instance


class LeastRequest:
    """Sample two eligible instances, send to the one with fewer requests in flight (weight-scaled).

    The counts come from the service's concurrency caps, which outlive registry snapshots, so a
    swap does not make busy instances look idle.
    """

    name: ClassVar[str] = "least_request"
    __slots__ = ("_load", "_rng")

    def __init__(self, load: Callable[[Instance], int]) -> None:
        self._load = load
        self._rng = random.Random()

    @classmethod
    def create(cls, load: Callable[[Instance], int]) -> LeastRequest:
        """Return a balancer reading requests in flight from ``load``."""
        return cls(load)

    def pick(self, eligible: Sequence[Instance]) -> Instance:
        """Return the less loaded of two random instances."""
        if len(eligible) == 1:
            return eligible[0]
        a, b = self._rng.sample(range(len(eligible)), 2)
        ia, ib = eligible[a], eligible[b]
        load = self._load
        la = (load(ia) + 1) / max(1, ia.weight)
        lb = (load(ib) + 1) / max(1, ib.weight)
        return ia if la <= lb else ib

    def done(self, instance: Instance) -> None:
        """Do nothing: the caps count the end of the request."""
