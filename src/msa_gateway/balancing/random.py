"""Weighted random choice."""

from __future__ import annotations

import random
from collections.abc import Sequence

from msa_gateway.model import Instance


class RandomBalancer:
    """Pick at random, in proportion to the weights."""

    name = "random"
    __slots__ = ("_rng",)

    def __init__(self) -> None:
        self._rng = random.Random()

    def pick(self, eligible: Sequence[Instance]) -> Instance:
        """Return a random instance, weighted."""
        return self._rng.choices(eligible, weights=[max(1, i.weight) for i in eligible])[0]

    def done(self, instance: Instance) -> None:
        """Do nothing."""
