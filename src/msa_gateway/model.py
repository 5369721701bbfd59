"""Frozen data: instances, per-service options and the discovered set a provider emits.

Everything here is immutable and cheap to compare, so that a provider can emit a complete
snapshot and the aggregator can tell in one ``==`` whether anything changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from msa_gateway.health.outlier import OutlierConfig
from msa_gateway.health.panic import DEFAULT_PANIC_THRESHOLD
from msa_gateway.proxy.limits import LimitsConfig
from msa_gateway.proxy.retry import RetryPolicy

# Path segments that belong to the gateway itself; a service may never be named like one.
RESERVED_NAMES: frozenset[str] = frozenset(
    {"health", "metrics", "services", "docs", "redoc", "openapi.json", "favicon.ico", "admin", "static"}
)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-service upstream timeouts in seconds (``total`` None means unbounded)."""

    connect: float = 2.0
    read: float = 30.0
    total: float | None = None


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active health probe settings; ``path`` None disables probing."""

    path: str | None = "/health"
    interval: float = 5.0
    timeout: float = 2.0
    healthy_threshold: int = 1
    unhealthy_threshold: int = 2


@dataclass(frozen=True, slots=True)
class ServiceOptions:
    """How the gateway talks to one service; the same for every instance of it."""

    timeouts: Timeouts = field(default_factory=Timeouts)
    health_check: HealthCheck = field(default_factory=HealthCheck)
    balancer: str = "round_robin"
    pass_host_header: bool = False
    max_connections_per_instance: int = 256
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    outlier: OutlierConfig = field(default_factory=OutlierConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    panic_threshold: float = DEFAULT_PANIC_THRESHOLD
    max_body_size: int | None = None


@dataclass(frozen=True, slots=True)
class Instance:
    """One reachable copy of a service, as discovered."""

    id: str
    host: str
    port: int
    weight: int = 1
    health_path: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    source: str = "static"
    scheme: str = "http"

    address: str = field(init=False, repr=False, compare=False)
    base_url: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # host:port (brackets around IPv6 literals) and the origin, computed once: read per request.
        host = f"[{self.host}]" if ":" in self.host else self.host
        object.__setattr__(self, "address", f"{host}:{self.port}")
        object.__setattr__(self, "base_url", f"{self.scheme}://{host}:{self.port}")


# What a discovery provider emits: every service it knows with all its instances.
Discovered = Mapping[str, tuple[Instance, ...]]


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """A service as the data plane sees it: its instances plus the options that apply to it."""

    name: str
    instances: tuple[Instance, ...]
    options: ServiceOptions
