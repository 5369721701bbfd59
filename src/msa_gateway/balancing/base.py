"""The balancer seam: pick one instance among the eligible ones.

Balancers never see health state: the caller passes only the instances that may receive
traffic now. One balancer object exists per service per registry snapshot, so a balancer's own
state (counters, current weights) lives as long as the snapshot; state that must outlive a
snapshot, the requests in flight per instance, reaches it through ``Load``, read from the
service's concurrency caps (one counter for both). A new algorithm is one module plus one
entry in ``balancing/table.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from msa_gateway.model import Instance

Load = Callable[[Instance], int]
"""Requests in flight to an instance now, across snapshots (the caps' counter)."""


def no_load(_: Instance) -> int:
    """Return 0: for balancers used without the caps (tests, benchmarks)."""
    return 0


class Balancer(Protocol):
    """Pick an instance; ``done`` is called once for every pick when its request ends."""

    name: str

    @classmethod
    def create(cls, load: Load) -> Balancer:
        """Return a new balancer for one service; ``load`` gives each instance's requests in flight."""
        ...

    def pick(self, eligible: Sequence[Instance]) -> Instance:
        """Return one of ``eligible`` (never empty)."""
        ...

    def done(self, instance: Instance) -> None:
        """Note that a request sent to ``instance`` has ended."""
        ...
