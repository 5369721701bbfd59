"""The balancer table: the name in ``balancer:`` picks the class; the names are derived from it."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from msa_gateway.balancing.base import Balancer, Load, no_load
from msa_gateway.balancing.consistent_hash import ConsistentHash
from msa_gateway.balancing.least_request import LeastRequest
from msa_gateway.balancing.p2c_ewma import P2CEwma
from msa_gateway.balancing.random import RandomBalancer
from msa_gateway.balancing.round_robin import RoundRobin, WeightedRoundRobin
from msa_gateway.balancing.sticky import Sticky
from msa_gateway.model import BalancerOptions

BALANCERS: Mapping[str, type[Balancer]] = MappingProxyType(
    {
        cls.name: cls
        for cls in (
            RoundRobin,
            WeightedRoundRobin,
            RandomBalancer,
            LeastRequest,
            P2CEwma,
            ConsistentHash,
            Sticky,
        )
    }
)
BALANCER_NAMES: tuple[str, ...] = tuple(BALANCERS)


def create_balancer(name: str, load: Load = no_load, options: BalancerOptions | None = None) -> Balancer:
    """Return a new balancer of the algorithm called ``name``, given ``options`` when it takes them."""
    try:
        cls = BALANCERS[name]
    except KeyError:
        raise ValueError(f"unknown balancer {name!r}; known: {', '.join(BALANCER_NAMES)}") from None
    configured = getattr(cls, "configured", None)
    if configured is not None and options is not None:
        return configured(load, options)  # type: ignore[no-any-return]
    return cls.create(load)
