"""``rate_limit``: admit a request only while its key is within every configured limit (GCRA).

The request stage runs after authentication (so ``key: consumer`` sees the API key's or the
token's consumer) and before the transforms. It finds the request's key, asks the policy's
``Limiter`` (``ratelimit_limiter.py``) for one atomic decision, counts it in
``gateway_ratelimit_decisions_total{service,policy,result}`` and either passes or raises 429
(``TooManyRequests``: JSON, ``Retry-After``). The response stage adds the IETF headers
(draft-ietf-httpapi-ratelimit-headers) to every answer of the route that was decided:

    RateLimit-Policy: "per-ip";q=100;w=1
    RateLimit: "per-ip";r=42;t=1

``q``/``w`` are each limit's quota and window in seconds, ``r`` the requests that may still come
at once and ``t`` the seconds until the bucket is full again. With several limits each has an
item named ``{name}-{i}``. Keys: ``ip`` (the client address as ``trusted_proxies`` resolve it),
``consumer`` (set by ``api_key``/``jwt``), ``header:<name>`` or ``route`` (one bucket for all);
a request without a consumer or the header is counted under its IP.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from msa_gateway.errors import Overloaded, TooManyRequests
from msa_gateway.observability.ratelimit_counts import ALLOWED, FAIL_CLOSED, LIMITED
from msa_gateway.policies.ratelimit_limiter import Limiter
from msa_gateway.policies.ratelimit_redis import RedisBackend
from msa_gateway.policies.shared import SharedState

MAX_STATES = 4096  # formatted RateLimit values kept per stage
Pairs = tuple[tuple[bytes, bytes], ...]
CLIENT_MARGIN = 0.1  # seconds the Redis client's socket timeouts add to twice backend_timeout

if TYPE_CHECKING:
    from collections.abc import Callable

    from msa_gateway.model import ServiceSpec
    from msa_gateway.policies.base import Reply
    from msa_gateway.policies.gcra import Decision
    from msa_gateway.policies.ratelimit_config import RateLimitConfig
    from msa_gateway.proxy.request import Headers, ProxyRequest


def redis_backend(shared: SharedState, timeout: float) -> RedisBackend:
    """Return the runtime's Redis backend for ``timeout`` (one client per distinct timeout)."""
    # Imported here: settings imports the policy table, which imports this module.
    from msa_gateway.discovery.redis_registry import connect
    from msa_gateway.settings import Settings

    def make() -> RedisBackend:
        settings = shared.settings if shared.settings is not None else Settings()
        gauge = shared.metrics.ratelimit_backend_up.labels("redis") if shared.metrics is not None else None
        if gauge is not None:
            gauge.set(1)

        def changed(up: bool) -> None:
            if gauge is not None:
                gauge.set(1 if up else 0)

        # redis-py names the server (decisions go over the backend's own connection) and serves
        # maintenance commands, with timeouts no shorter than a decision's.
        client = connect(settings, timeout=2 * timeout + CLIENT_MARGIN)
        return RedisBackend(client, timeout, shared.monotonic, changed)

    return shared.get(("ratelimit_redis", timeout), make, RedisBackend)


class RateLimitStage:
    """The request stage: one decision per request; 429 when refused.

    The ``local`` backend is the cheap path (issue: at most 5 µs a request): the key function
    is picked once, the decision is one call into the buckets, the metric is a plain integer
    (``DecisionCounts``) and the headers of each distinct state are built once and kept.
    """

    name = "rate_limit"
    __slots__ = (
        "config",
        "counts",
        "header",
        "key_of",
        "limiter",
        "local",
        "now",
        "one_states",
        "policy_header",
        "states",
    )

    def __init__(self, config: RateLimitConfig, limiter: Limiter, service: str, shared: SharedState) -> None:
        self.config = config
        self.limiter = limiter
        self.local = limiter.local if limiter.redis is None else None
        self.now = limiter.now
        self.header = config.header
        metrics = shared.metrics
        self.counts = metrics.ratelimit_decisions.row(service, config.name) if metrics is not None else None
        self.key_of: Callable[[ProxyRequest], str] = getattr(self, f"_{config.key}_key")
        self.policy_header = policy_header(config)
        self.states: dict[tuple[tuple[int, ...], tuple[int, ...]], Pairs] = {}  # headers made
        self.one_states: dict[tuple[int, int], Pairs] = {}  # (remaining, reset) -> headers, one limit

    @classmethod
    def build(cls, config: RateLimitConfig, spec: ServiceSpec) -> RateLimitStage:
        """Return the stage, with the policy's buckets kept in the runtime's shared store."""
        shared = SharedState.of(spec)

        def make() -> Limiter:
            redis = redis_backend(shared, config.backend_timeout) if config.backend == "redis" else None
            return Limiter(config, spec.name, redis, shared.monotonic, shared.tasks)

        limiter = shared.get(("rate_limit", spec.name, config), make, Limiter)
        if cls is RateLimitStage and limiter.local.one is not None:
            if limiter.redis is None:
                return LocalRateLimitStage(config, limiter, spec.name, shared)
            if config.sync_interval is None:
                return RedisRateLimitStage(config, limiter, spec.name, shared)
        return cls(config, limiter, spec.name, shared)

    # The bucket key of a request, one function per ``key`` kind (``key_of`` is set to one).

    @staticmethod
    def _ip_key(request: ProxyRequest) -> str:
        return "ip:" + request.client_ip

    @staticmethod
    def _route_key(request: ProxyRequest) -> str:
        del request
        return "route"

    @staticmethod
    def _consumer_key(request: ProxyRequest) -> str:
        consumer = request.consumer
        return "ip:" + request.client_ip if consumer is None else "c:" + consumer

    def _header_key(self, request: ProxyRequest) -> str:
        wanted = self.header
        for name, value in request.headers:
            if name == wanted:
                return "h:" + value.decode("latin-1")
        return "ip:" + request.client_ip

    async def __call__(self, request: ProxyRequest) -> Reply | None:
        """Decide; pass (with the headers for the response stage) or raise 429/503."""
        local = self.local
        decision: Decision | None
        if local is not None:
            decision = local.decide(self.key_of(request), self.now())
            result = ALLOWED if decision.allowed else LIMITED
        else:
            decision, result = await self.limiter.decide(self.key_of(request))
        self._conclude(request, decision, result)
        return None

    def _conclude(self, request: ProxyRequest, decision: Decision | None, result: str) -> None:
        """Count the decision; leave its headers on the request, or raise 429 (503: failing closed)."""
        counts = self.counts
        if counts is not None:
            counts[result] += 1
        if decision is None:
            if result == FAIL_CLOSED:
                raise Overloaded("the rate limiter is unavailable", 1)
            return
        reset = decision.reset
        ceils = (math.ceil(reset[0]),) if len(reset) == 1 else tuple(map(math.ceil, reset))
        headers = self._headers(decision.remaining, ceils)
        if decision.allowed:
            request.rate_limit = headers
            return
        raise TooManyRequests(
            f"rate limit {self.config.name!r} exceeded", max(1, math.ceil(decision.retry_after)), headers
        )

    def _admitted(self, request: ProxyRequest, state: tuple[int, int]) -> None:
        """Count an admission under one limit and leave its headers, kept per (remaining, reset)."""
        counts = self.counts
        if counts is not None:
            counts[ALLOWED] += 1
        headers = self.one_states.get(state)
        if headers is None:
            if len(self.one_states) >= MAX_STATES:
                self.one_states.clear()
            headers = self.one_states[state] = self._make_headers((state[0],), (state[1],))
        request.rate_limit = headers

    def _headers(self, remaining: tuple[int, ...], reset: tuple[int, ...]) -> Pairs:
        """Return the RateLimit headers, made once per distinct (remaining, reset) and kept."""
        seen = (remaining, reset)
        headers = self.states.get(seen)
        if headers is None:
            if len(self.states) >= MAX_STATES:
                self.states.clear()
            headers = self.states[seen] = self._make_headers(remaining, reset)
        return headers

    def _make_headers(self, remaining: tuple[int, ...], reset: tuple[int, ...]) -> Pairs:
        return (
            (b"ratelimit-policy", self.policy_header),
            (b"ratelimit", state_header(self.config, remaining, reset)),
        )


class LocalRateLimitStage(RateLimitStage):
    """The stage for the commonest policy, one limit on the ``local`` backend: the decision fused.

    An admitted request costs one call into the buckets (``LocalBuckets.admit``: the TAT advanced,
    the headers' two numbers back) and one dict lookup for its headers: no ``Decision``, no tuples
    per request. A refused one takes the general path, which says why.
    """

    __slots__ = ("buckets",)

    def __init__(self, config: RateLimitConfig, limiter: Limiter, service: str, shared: SharedState) -> None:
        super().__init__(config, limiter, service, shared)
        self.buckets = limiter.local

    async def __call__(self, request: ProxyRequest) -> Reply | None:
        """Decide; pass with the headers for the response stage, or raise 429."""
        state = self.buckets.admit(self.key_of(request), self.now())
        if state is None:
            return await RateLimitStage.__call__(self, request)  # refused: the Decision says by how much
        self._admitted(request, state)
        return None


class RedisRateLimitStage(RateLimitStage):
    """One limit on the ``redis`` backend, no pre-check: Redis's answer read without a ``Decision``.

    While Redis is up an admitted request costs the packed call (kept per key), one await and the
    two numbers of the answer; anything else (refused, an error reply, Redis down) goes the
    general way with the reply it got, so a request is never decided twice.
    """

    __slots__ = ("redis",)

    def __init__(self, config: RateLimitConfig, limiter: Limiter, service: str, shared: SharedState) -> None:
        super().__init__(config, limiter, service, shared)
        assert limiter.redis is not None
        self.redis = limiter.redis

    async def __call__(self, request: ProxyRequest) -> Reply | None:
        """Decide; pass with the headers for the response stage, or raise 429/503."""
        redis = self.redis
        if not redis.up:  # the general way retries Redis when due, else applies the failure mode
            return await RateLimitStage.__call__(self, request)
        key = self.key_of(request)
        limiter = self.limiter
        command = limiter.command(key)
        reply = await redis.send(command)
        answer: list[int] | None
        if type(reply) is list and redis.up:
            if reply[0] == 1:  # admitted: {1, 0, remaining, reset in µs}, reset rounded up to seconds
                self._admitted(request, (reply[2], -(-reply[3] // 1_000_000)))
                return None
            answer = reply
        else:
            answer = await redis.settle(reply, command)
        decision, result = limiter.outcome(key, answer)
        self._conclude(request, decision, result)
        return None


class RateLimitHeaders:
    """The response stage: the RateLimit headers of the decision on the instance's answer."""

    name = "rate_limit"
    __slots__ = ()

    @classmethod
    def build(cls, config: RateLimitConfig, spec: ServiceSpec) -> RateLimitHeaders:
        """Return the stage (nothing to configure)."""
        del config, spec
        return cls()

    def __call__(self, request: ProxyRequest, status: int, headers: Headers) -> Headers:
        """Add the headers the request stage left on the request (none when it did not decide)."""
        del status
        if request.rate_limit is not None:
            headers.extend(request.rate_limit)
        return headers


def _items(config: RateLimitConfig) -> list[str]:
    if len(config.limits) == 1:
        return [config.name]
    return [f"{config.name}-{i}" for i in range(len(config.limits))]


def policy_header(config: RateLimitConfig) -> bytes:
    """Return the ``RateLimit-Policy`` value: each limit's quota and window."""
    return ", ".join(
        f'"{item}";q={limit.count};w={max(1, math.ceil(limit.period))}'
        for item, limit in zip(_items(config), config.limits, strict=True)
    ).encode()


def state_header(config: RateLimitConfig, remaining: tuple[int, ...], reset: tuple[int, ...]) -> bytes:
    """Return the ``RateLimit`` value: each limit's remaining requests and whole seconds until it is full."""
    return ", ".join(
        f'"{item}";r={left};t={seconds}'
        for item, left, seconds in zip(_items(config), remaining, reset, strict=True)
    ).encode()
