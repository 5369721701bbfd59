"""Weighted random choice."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import ClassVar

from msa_gateway.model import Instance


class RandomBalancer:
    """Pick at random, in proportion to the weights."""

    name: ClassVar[str] = "random"
    __slots__ = ("_rng",)

    @classmethod
    def create(cls, load: Callable[[Instance], int]) -> RandomBalancer:
        """Return a new balancer (it does not look at load)."""
        return cls()

    def __init__(self) -> None:
        self._rng = random.Random()

    def pick(self, eligible: Sequence[Instance]) -> Instance:
        """Return a random instance, weighted."""
        return self._rng.choices(eligible, weights=[max(1, i.weight) for i in eligible])[0]

    def done(self, instance: Instance) -> None:
        """Do nothing."""
