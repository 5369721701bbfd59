"""Immutable, versioned registry snapshots and the per-service data plane built from them.

A ``Snapshot`` is built once per discovered change and swapped in with one assignment; the
proxy reads it once per request. Everything a request needs (balancer, eligible instances,
compiled policy stages, timeouts, metric children) is precomputed here so the request path only
looks things up. State that must outlive a snapshot (caps, budget, ejections, panic) lives on
the service's ``ServiceGuard``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from msa_gateway.balancing.base import Balancer
from msa_gateway.balancing.table import create_balancer
from msa_gateway.health.table import HealthTable, instance_key
from msa_gateway.model import Instance, ServiceOptions, ServiceSpec
from msa_gateway.observability.metrics import Metrics
from msa_gateway.policies.base import RequestStage, ResponseStage
from msa_gateway.policies.chain import compile_request_stages, compile_response_stages
from msa_gateway.proxy.resilience import ServiceGuard
from msa_gateway.proxy.trust import Network
from msa_gateway.routing.table import RouteTable


class ServiceRoute:
    """One service's data plane within one snapshot."""

    __slots__ = (
        "balancer",
        "duration",
        "eligible",
        "eligible_keys",
        "guard",
        "instances",
        "key_for",
        "key_set",
        "keys",
        "name",
        "observe",
        "options",
        "pick_for",
        "prefix",
        "request_stages",
        "response_stages",
        "spec",
        "sticky_stage",
        "upstream_errors",
        "variants",
    )

    def __init__(
        self, spec: ServiceSpec, guard: ServiceGuard, balancer: Balancer, duration: Any, upstream_errors: Any
    ) -> None:
        """Use ``build_route``; a route made here has no eligible instance until ``refresh``."""
        self.spec = spec
        self.options: ServiceOptions = spec.options  # read per request: one attribute, not two
        self.name = spec.name
        self.prefix = "/" + spec.name
        self.instances: tuple[Instance, ...] = spec.instances
        self.keys: tuple[str, ...] = tuple(instance_key(spec.name, i.id, i.address) for i in spec.instances)
        self.key_set: frozenset[str] = frozenset(self.keys)
        self.key_for: dict[int, str] = {id(i): k for i, k in zip(self.instances, self.keys, strict=True)}
        self.guard = guard
        self.balancer = balancer
        # The balancer's optional extras (balancing/base.py), looked up once here: a missing
        # attribute costs compiled code an AttributeError, which per request added up.
        self.pick_for: Callable[[Sequence[Instance], Any], Instance] | None = getattr(
            balancer, "pick_for", None
        )
        self.observe: Callable[[Instance, float], None] | None = getattr(balancer, "observe", None)
        self.sticky_stage: Callable[[Instance, str], ResponseStage] | None = getattr(
            balancer, "response_stage", None
        )
        self.request_stages: tuple[RequestStage, ...] = compile_request_stages(spec)
        self.response_stages: tuple[ResponseStage, ...] = compile_response_stages(spec)
        self.duration = duration
        self.upstream_errors = upstream_errors
        self.eligible: tuple[Instance, ...] = ()
        self.eligible_keys: tuple[str, ...] = ()
        self.variants: list[ServiceRoute] = []

    def variant(self, options: ServiceOptions, prefix: str) -> ServiceRoute:
        """Return a declarative route's view of this service: its own options and stages, the rest shared.

        Balancer, guard, instances and metric children are this route's, so a service reached by
        several routes balances, caps and counts as one; ``refresh`` keeps the variant's eligible
        instances in step.
        """
        spec = replace(self.spec, options=options)
        twin = ServiceRoute(spec, self.guard, self.balancer, self.duration, self.upstream_errors)
        twin.prefix = prefix
        twin.eligible, twin.eligible_keys = self.eligible, self.eligible_keys
        self.variants.append(twin)
        return twin

    def refresh(self, health: HealthTable) -> None:
        """Recompute the instances that pass their active health checks (for the variants too)."""
        pairs = [(i, k) for i, k in zip(self.instances, self.keys, strict=True) if health.is_eligible(k)]
        self.eligible = tuple(i for i, _ in pairs)
        self.eligible_keys = tuple(k for _, k in pairs)
        for twin in self.variants:
            twin.eligible, twin.eligible_keys = self.eligible, self.eligible_keys

    def panic_now(self) -> bool:
        """Return whether the service would balance over all instances right now (panic mode)."""
        return self.guard.candidates(self.instances, self.keys, self.eligible, self.eligible_keys)[1]


def build_route(
    spec: ServiceSpec, metrics: Metrics, health: HealthTable, guard: ServiceGuard
) -> ServiceRoute:
    """Return the data plane of the service ``spec`` describes, eligible instances read from ``health``."""
    limits = guard.limits
    route: ServiceRoute  # the balancer's load reads the route's keys: bound once the route is made
    balancer = create_balancer(
        spec.options.balancer,
        lambda instance: limits.in_flight(route.key_for[id(instance)]),
        spec.options.balancer_options,
    )
    duration = metrics.requests.histogram(spec.name)
    route = ServiceRoute(spec, guard, balancer, duration, metrics.upstream_errors)
    route.refresh(health)
    return route


class Seen(Mapping[str, float]):
    """When each instance key was last confirmed by a registry read: the snapshot's creation time.

    A view over the snapshot's services, so a swap need not write one entry per instance.
    """

    __slots__ = ("_at", "_services")

    def __init__(self, services: Mapping[str, ServiceRoute], at: float) -> None:
        self._services = services
        self._at = at

    def __getitem__(self, key: str) -> float:
        route = self._services.get(key.partition("/")[0])
        if route is None or key not in route.key_set:
            raise KeyError(key)
        return self._at

    def __iter__(self) -> Iterator[str]:
        return (k for route in self._services.values() for k in route.keys)

    def __len__(self) -> int:
        return sum(len(route.keys) for route in self._services.values())


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every routable service at one moment; ``version`` grows by one per swap.

    Unchanged services keep their ``ServiceRoute`` objects from one snapshot to the next
    (``swap.py``); ``instance_count`` is kept up to date by the swap, not recounted.
    """

    version: int
    services: Mapping[str, ServiceRoute]
    created: float = field(default_factory=time.time)
    routes: RouteTable | None = None  # None: no ``routes:`` configured, only /{service}/{path}
    trusted_proxies: tuple[Network, ...] = ()
    instance_count: int = 0

    @property
    def seen(self) -> Mapping[str, float]:
        """Return when each instance key was last confirmed (``/services`` shows it as ``last_seen``)."""
        return Seen(self.services, self.created)


EMPTY = Snapshot(version=0, services=MappingProxyType({}))
