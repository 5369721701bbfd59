"""The balancer seam: pick one instance among the eligible ones.

Balancers never see health state: the caller passes only the instances that may receive
traffic now. One balancer object exists per service per registry snapshot, so its state
(counters, current weights) lives as long as the snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from msa_gateway.model import Instance


class Balancer(Protocol):
    """Pick an instance; ``done`` is called once for every pick when its request ends."""

    name: str

    def pick(self, eligible: Sequence[Instance]) -> Instance:
        """Return one of ``eligible`` (never empty)."""
        ...

    def done(self, instance: Instance) -> None:
        """Note that a request sent to ``instance`` has ended."""
        ...


def _factories() -> dict[str, Callable[[], Balancer]]:
    from msa_gateway.balancing.least_request import LeastRequest
    from msa_gateway.balancing.random import RandomBalancer
    from msa_gateway.balancing.round_robin import RoundRobin, WeightedRoundRobin

    return {
        "round_robin": RoundRobin,
        "weighted_round_robin": WeightedRoundRobin,
        "random": RandomBalancer,
        "least_request": LeastRequest,
    }


BALANCER_NAMES = ("round_robin", "weighted_round_robin", "random", "least_request")


def create_balancer(name: str) -> Balancer:
    """Return a new balancer of the algorithm called ``name``."""
    try:
        return _factories()[name]()
    except KeyError:
        raise ValueError(f"unknown balancer {name!r}; known: {', '.join(BALANCER_NAMES)}") from None
