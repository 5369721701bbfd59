"""The balancer table: the name in ``balancer:`` picks the class; the names are derived from it."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from msa_gateway.balancing.base import Balancer, Load, no_load
from msa_gateway.balancing.least_request import LeastRequest
from msa_gateway.balancing.random import RandomBalancer
from msa_gateway.balancing.round_robin import RoundRobin, WeightedRoundRobin

BALANCERS: Mapping[str, type[Balancer]] = MappingProxyType(
    {cls.name: cls for cls in (RoundRobin, WeightedRoundRobin, RandomBalancer, LeastRequest)}
)
BALANCER_NAMES: tuple[str, ...] = tuple(BALANCERS)


def create_balancer(name: str, load: Load = no_load) -> Balancer:
    """Return a new balancer of the algorithm called ``name``."""
    try:
        cls = BALANCERS[name]
    except KeyError:
        raise ValueError(f"unknown balancer {name!r}; known: {', '.join(BALANCER_NAMES)}") from None
    return cls.create(load)
