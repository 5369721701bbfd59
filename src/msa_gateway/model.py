"""Frozen data: instances, per-service options and the discovered set a provider emits.

Config types live here, not beside their implementations: ``proxy/retry.py``, ``proxy/limits.py``,
``health/outlier.py`` and ``health/panic.py`` depend on the model, never the other way round.

Everything here is immutable and cheap to compare, so that a provider can emit a complete
snapshot and the aggregator can tell in one ``==`` whether anything changed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from msa_gateway.policies.shared import SharedState

MIB = 1024 * 1024
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110 5.6.2)
DEFAULT_PANIC_THRESHOLD = 50.0  # percent, Envoy's healthy_panic_threshold default

# First path segments the gateway's own endpoints answer; no route or service may take them.
OWN_PATHS: frozenset[str] = frozenset(
    {"health", "metrics", "services", "docs", "redoc", "openapi.json", "favicon.ico"}
)
# Names a service may never have (its own endpoints, and two kept for later ones).
RESERVED_NAMES: frozenset[str] = OWN_PATHS | {"admin", "static"}


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
class ProbeLimits:
    """How active probing as a whole may load the gateway (``health/scheduler.py``).

    ``concurrency``: probes in flight at once. ``cpu_budget``: share of one core probing may use;
    past it every interval is stretched alike. ``lag_fraction``: a timeout during which the
    gateway's own event loop ran this share of the timeout late is not held against the instance.
    """

    concurrency: int = 512
    cpu_budget: float = 0.5
    lag_fraction: float = 0.25

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if not self.cpu_budget > 0:
            raise ValueError("cpu_budget must be > 0")
        if not 0 < self.lag_fraction <= 1:
            raise ValueError("lag_fraction must be more than 0 and at most 1")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry settings of one service; the defaults retry only what cannot have been delivered.

    ``retry_on_reset`` (default True) lets idempotent requests be retried after a reset or an
    invalid response, like NGINX's default ``proxy_next_upstream error``; statuses and read
    timeouts are opt-in, as in Envoy where nothing is retried without a ``retry_on``.
    """

    max_retries: int = 2
    retry_on_status: frozenset[int] = frozenset()
    retry_on_timeout: bool = False
    retry_on_reset: bool = True
    per_try_timeout: float | None = None
    buffer_limit: int = MIB
    budget_percent: float = 20.0
    min_retry_concurrency: int = 3

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if any(not 100 <= s <= 599 for s in self.retry_on_status):
            raise ValueError("retry_on_status must hold HTTP status codes (100-599)")
        if self.per_try_timeout is not None and not self.per_try_timeout > 0:
            raise ValueError("per_try_timeout must be > 0")
        if self.buffer_limit < 0:
            raise ValueError("buffer_limit must be >= 0")
        if not 0 <= self.budget_percent <= 100:
            raise ValueError("budget_percent must be between 0 and 100")
        if self.min_retry_concurrency < 0:
            raise ValueError("min_retry_concurrency must be >= 0")

    def can_buffer(self, content_length: int | None) -> bool:
        """Return whether a body of ``content_length`` bytes may be buffered for replay (None: unknown)."""
        return content_length is not None and 0 <= content_length <= self.buffer_limit

    def attempt_timeout(self, deadline_left: float | None) -> float | None:
        """Return how long one attempt may take: ``per_try_timeout`` bounded by the deadline."""
        if deadline_left is None:
            return self.per_try_timeout
        if self.per_try_timeout is None:
            return max(0.0, deadline_left)
        return max(0.0, min(self.per_try_timeout, deadline_left))


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Caps of one service (Envoy's circuit breaker defaults per cluster: 1024 each)."""

    max_requests_per_instance: int = 256  # matches ServiceOptions.max_connections_per_instance
    max_pending_per_instance: int = 256
    max_requests_per_service: int = 1024  # Envoy max_requests: 1024
    max_pending_per_service: int = 1024  # Envoy max_pending_requests: 1024
    retry_after: int = 1  # seconds, in the 503's Retry-After header

    def __post_init__(self) -> None:
        for name in (
            "max_requests_per_instance",
            "max_pending_per_instance",
            "max_requests_per_service",
            "max_pending_per_service",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.retry_after < 0:
            raise ValueError("retry_after must be >= 0")


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    """Outlier detection settings of one service (defaults: Envoy's, except the 50% share)."""

    consecutive_failures: int = 5  # Envoy consecutive_gateway_failure: 5; 0 disables ejection
    count_all_5xx: bool = False  # also count 500, 501, 505... (Envoy consecutive_5xx)
    base_ejection_time: float = 30.0  # Envoy base_ejection_time: 30 s
    max_ejection_time: float = 300.0  # Envoy max_ejection_time: 300 s
    max_ejection_percent: float = 50.0  # Envoy max_ejection_percent: 10%
    always_eject_one: bool = True  # Envoy always_eject_one_host (off by default there)
    decay_interval: float = 10.0  # Envoy interval: 10 s
    # Latency ejection (``health/latency.py``): an instance busy without answering for
    # ``latency_multiple`` x the service's recent p99 (at least ``latency_min`` s) gets no new
    # requests until it answers again. 0 disables it.
    latency_multiple: float = 0.0
    latency_min: float = 0.1

    def __post_init__(self) -> None:
        if self.latency_multiple < 0 or not self.latency_min > 0:
            raise ValueError("latency_multiple must be >= 0 and latency_min > 0")
        if self.consecutive_failures < 0:
            raise ValueError("consecutive_failures must be >= 0")
        if not self.base_ejection_time > 0:
            raise ValueError("base_ejection_time must be > 0")
        if self.max_ejection_time < self.base_ejection_time:
            raise ValueError("max_ejection_time must be >= base_ejection_time")
        if not 0 <= self.max_ejection_percent <= 100:
            raise ValueError("max_ejection_percent must be between 0 and 100")
        if not self.decay_interval > 0:
            raise ValueError("decay_interval must be > 0")

    @property
    def enabled(self) -> bool:
        """Return whether any instance can ever be ejected."""
        return self.consecutive_failures > 0 and self.max_ejection_percent > 0

    @property
    def max_multiplier(self) -> int:
        """Return the multiplier at which the ejection time reaches ``max_ejection_time``."""
        return max(1, math.ceil(self.max_ejection_time / self.base_ejection_time - 1e-9))


def check_hash_key(value: str) -> str:
    """Return ``value`` when it names a hash key source; raise ValueError saying why not."""
    kind, _, name = value.partition(":")
    if kind in ("header", "cookie"):
        if not name or not _TOKEN.match(name):
            raise ValueError(f"hash_key {value!r}: {kind}: needs a valid name after the colon")
    elif value not in ("client_ip", "path"):
        raise ValueError(f"hash_key {value!r}: use header:<name>, cookie:<name>, client_ip or path")
    return value


def check_cookie_name(value: str) -> str:
    """Return ``value`` when it is a valid cookie name (an HTTP token); raise ValueError if not."""
    if not _TOKEN.match(value):
        raise ValueError(f"{value!r} is not a valid cookie name")
    return value


@dataclass(frozen=True, slots=True)
class BalancerOptions:
    """Settings of the balancers that need more than a name (``balancer_options:``).

    ``hash_key`` (consistent_hash): ``header:<name>``, ``cookie:<name>``, ``client_ip`` or ``path``.
    ``cookie`` (sticky): the name of the cookie the gateway sets; its value is an opaque hash.
    ``decay`` (p2c_ewma): seconds over which a latency observation fades, so an idle slow
    instance gets probed again.
    """

    hash_key: str = "client_ip"
    virtual_nodes: int = 500
    cookie: str = "msa_sticky"
    cookie_max_age: int | None = None
    decay: float = 10.0

    def __post_init__(self) -> None:
        check_hash_key(self.hash_key)
        check_cookie_name(self.cookie)
        if not 1 <= self.virtual_nodes <= 10_000:
            raise ValueError("virtual_nodes must be between 1 and 10000")
        if self.cookie_max_age is not None and self.cookie_max_age < 0:
            raise ValueError("cookie_max_age must be >= 0")
        if not self.decay > 0:
            raise ValueError("decay must be > 0")


@dataclass(frozen=True, slots=True)
class WebSocketConfig:
    """WebSocket settings of one service: idle connections close, and their number is capped.

    There is no message size limit: the gateway relays bytes, it never holds a message.
    """

    idle_timeout: float = 300.0  # seconds without a message either way
    max_connections: int = 10_000  # open WebSocket connections to the service, across instances

    def __post_init__(self) -> None:
        if not self.idle_timeout > 0:
            raise ValueError("idle_timeout must be > 0")
        if self.max_connections < 1:
            raise ValueError("max_connections must be >= 1")


@dataclass(frozen=True, slots=True)
class HedgingConfig:
    """Request hedging of one service (``proxy/hedging.py``); off unless the service sets it.

    When no response head arrived ``delay`` seconds after an idempotent request with a buffered
    body was sent (or, with ``percentile``, that percentile of the service's recent latency,
    at least ``min_delay``), the same request goes to another instance; the first head wins.
    """

    delay: float | None = None
    percentile: float | None = None
    max_hedges: int = 1
    min_delay: float = 0.005

    def __post_init__(self) -> None:
        if (self.delay is None) == (self.percentile is None):
            raise ValueError("hedging needs exactly one of a fixed delay or a percentile")
        if self.delay is not None and not self.delay > 0:
            raise ValueError("hedging delay must be > 0")
        if self.percentile is not None and not 50 <= self.percentile < 100:
            raise ValueError("hedging percentile must be between 50 and 99.9")
        if not 1 <= self.max_hedges <= 5:
            raise ValueError("max_hedges must be between 1 and 5")
        if not self.min_delay > 0:
            raise ValueError("min_delay must be > 0")


@dataclass(frozen=True, slots=True)
class ServiceOptions:
    """How the gateway talks to one service; the same for every instance of it."""

    timeouts: Timeouts = field(default_factory=Timeouts)
    health_check: HealthCheck = field(default_factory=HealthCheck)
    balancer: str = "round_robin"
    balancer_options: BalancerOptions = field(default_factory=BalancerOptions)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    pass_host_header: bool = False
    max_connections_per_instance: int = 256
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    outlier: OutlierConfig = field(default_factory=OutlierConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    panic_threshold: float = DEFAULT_PANIC_THRESHOLD
    max_body_size: int | None = None
    hedging: HedgingConfig | None = None
    # Parsed ``policies:`` blocks by policy name (policies/chain.py parses them); frozen configs.
    policies: tuple[tuple[str, Hashable], ...] = ()

    def policy(self, name: str) -> Any:
        """Return the parsed config of the policy called ``name``, or None when it is not configured."""
        for key, config in self.policies:
            if key == name:
                return config
        return None


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
    # The runtime's store of state that policy stages keep across snapshots (JWKS caches...).
    shared: SharedState | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class RecoveryConfig:
    """How long instances missing after a registry outage are kept (``discovery/recovery.py``).

    ``grace`` None means automatic: the longest instance lifetime (TTL) the provider has seen,
    else ``fallback``; either way at most ``maximum``. ``grace == 0`` applies every read at once.
    """

    grace: float | None = None
    fallback: float = 10.0
    maximum: float = 60.0

    def __post_init__(self) -> None:
        if self.grace is not None and self.grace < 0:
            raise ValueError("grace must be >= 0")
        if not self.fallback >= 0 or not self.maximum >= 0:
            raise ValueError("fallback and maximum must be >= 0")

    def resolve(self, longest_ttl: float | None) -> float:
        """Return the grace period in seconds, given the longest TTL the provider saw (None: unknown)."""
        if self.grace is not None:
            return self.grace
        seen = longest_ttl if longest_ttl is not None and math.isfinite(longest_ttl) else self.fallback
        return max(0.0, min(seen, self.maximum))
