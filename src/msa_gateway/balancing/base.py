"""The balancer seam: pick one instance among the eligible ones.

Balancers never see health state: the caller passes only the instances that may receive
traffic now. One balancer object exists per service per registry snapshot, so a balancer's own
state (counters, current weights) lives as long as the snapshot; state that must outlive a
snapshot, the requests in flight per instance, reaches it through ``Load``, read from the
service's concurrency caps (one counter for both). A new algorithm is one module plus one
entry in ``balancing/table.py``.

Optional extras, looked up once per route when a snapshot is built (``ServiceRoute``), so a balancer
without them costs nothing per request:

* ``configured(load, options)``, a classmethod used instead of ``create`` to pass the service's
  ``balancer_options`` (``BalancerOptions``);
* ``pick_for(eligible, request)``, used instead of ``pick`` when the choice depends on the
  request (a hash key, a cookie);
* ``observe(instance, seconds)``, called after every attempt with its latency (p2c_ewma);
* ``response_stage(instance)``, a response stage added for the answered request (the sticky
  cookie).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar, Protocol

from msa_gateway.model import Instance

Load = Callable[[Instance], int]
"""Requests in flight to an instance now, across snapshots (the caps' counter)."""


def no_load(_: Instance) -> int:
    """Return 0: for balancers used without the caps (tests, benchmarks)."""
    return 0


class Balancer(Protocol):
    """Pick an instance; ``done`` is called once for every pick when its request ends."""

    name: ClassVar[str]

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
