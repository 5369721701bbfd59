"""Shared health hints between replicas (``SHARED_HEALTH_HINTS=true``), kept in the registry backend.

When one gateway ejects an instance (passive health check), it writes a hint "avoid service/key
for N seconds" to the Redis or etcd it already reads the registry from; every other replica
reads the hints every ``POLL`` (0.2 s) and ejects the instance for the time left. A hint expires
by TTL with the ejection. A hint only ever removes an instance from rotation: it never makes
eligible an instance a replica's own checks see failing, and a replica's own passing active
check returns the instance as usual. Hints from this process (``origin``) are ignored.

* Redis: one sorted set ``msa-gateway:health-hints``; member ``[service, key, origin]``, score
  the expiry in the server's clock (``TIME`` in a script), so clocks of the replicas never matter.
* etcd: one key per hint under ``ETCD_PREFIX`` without its last ``/`` + ``.health-hints/``, on a
  lease with the ejection's TTL in whole seconds (etcd may round a short TTL up to its minimum);
  the time left comes from the lease, in whole seconds too (so up to 1 s longer).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from typing import TYPE_CHECKING, Protocol

import orjson

from msa_gateway.discovery.etcd import (
    EtcdClient,
    b64,
    normalize_prefix,
    parse_endpoints,
    prefix_range_end,
    unb64,
)
from msa_gateway.discovery.redis_registry import DEFAULT_PREFIX, connect
from msa_gateway.health.sync import EjectionSync
from msa_gateway.settings import Settings

if TYPE_CHECKING:
    from msa_gateway.runtime import Runtime

log = logging.getLogger("msa_gateway.health")
POLL = 0.2
Hint = tuple[str, str, str, float]  # service, key, origin, seconds left
REDIS_KEY = f"{DEFAULT_PREFIX}:health-hints"
HINTS_SUFFIX = ".health-hints/"  # /msa-gateway/services/ -> /msa-gateway/services.health-hints/

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
# KEYS[1] the set; ARGV: member, ttl ms. Drops expired hints, adds this one, keeps the set alive.
PUBLISH_LUA = (
    _NOW
    + """redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local until_ms = now + tonumber(ARGV[2])
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not old) or tonumber(old) < until_ms then redis.call('ZADD', KEYS[1], until_ms, ARGV[1]) end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], math.max(until_ms, tonumber(last[2] or until_ms)) + 1000)
return now
"""
)
# KEYS[1] the set. Answers [now_ms, member, score, member, score, ...] of the live hints.
READ_LUA = _NOW + "return {now, unpack(redis.call('ZRANGEBYSCORE', KEYS[1], now + 1, '+inf', 'WITHSCORES'))}"


class Backend(Protocol):
    """Where hints are written and read."""

    async def publish(self, service: str, key: str, origin: str, seconds: float) -> None:
        """Store one hint for ``seconds``."""

    async def read(self) -> list[Hint]:
        """Return every live hint with its time left."""

    async def aclose(self) -> None:
        """Close the connection."""


class RedisHints:
    """Hints in one Redis sorted set scored by expiry (server clock)."""

    def __init__(self, settings: Settings) -> None:
        self.redis = connect(settings)

    async def publish(self, service: str, key: str, origin: str, seconds: float) -> None:
        """Store one hint for ``seconds``."""
        member = orjson.dumps([service, key, origin])
        await self.redis.eval(PUBLISH_LUA, 1, REDIS_KEY, member, max(1, round(seconds * 1000)))

    async def read(self) -> list[Hint]:
        """Return every live hint with its time left."""
        raw = await self.redis.eval(READ_LUA, 1, REDIS_KEY)
        now, flat = int(raw[0]), raw[1:]
        out = []
        for member, score in zip(flat[::2], flat[1::2], strict=True):
            service, key, origin = orjson.loads(member)
            out.append((str(service), str(key), str(origin), (float(score) - now) / 1000))
        return out

    async def aclose(self) -> None:
        """Close the connection."""
        await self.redis.aclose()


class EtcdHints:
    """Hints as etcd keys on leases with the ejection's TTL."""

    def __init__(self, settings: Settings) -> None:
        self.client = EtcdClient(parse_endpoints(settings.etcd_endpoints))
        self.prefix = normalize_prefix(settings.etcd_prefix).rstrip("/") + HINTS_SUFFIX
        self._until: dict[tuple[str, str], float] = {}  # (key, mod_revision) -> monotonic end, from its lease

    async def publish(self, service: str, key: str, origin: str, seconds: float) -> None:
        """Store one hint for ``seconds`` (whole seconds, rounded up)."""
        lease = await self.client.call("/lease/grant", {"TTL": max(1, math.ceil(seconds))})
        name = f"{self.prefix}{origin}/{service}/{key}"
        value = orjson.dumps({"service": service, "key": key, "origin": origin})
        await self.client.call("/kv/put", {"key": b64(name), "value": b64(value), "lease": lease["ID"]})

    async def read(self) -> list[Hint]:
        """Return every live hint with its time left (asked from its lease once per revision)."""
        prefix = self.prefix.encode()
        answer = await self.client.call(
            "/kv/range", {"key": b64(prefix), "range_end": b64(prefix_range_end(prefix))}
        )
        out, seen = [], {}
        for kv in answer.get("kvs", []):
            ident = (str(kv["key"]), str(kv.get("mod_revision")))
            if ident not in self._until:
                ttl = await self.client.call("/lease/timetolive", {"ID": kv.get("lease", "0")})
                # etcd reports whole seconds, rounded down: count the fraction as a full one.
                self._until[ident] = (
                    time.monotonic() + float(ttl.get("TTL", 0)) + 1.0
                )  # 0 is left out of the JSON
            seen[ident] = self._until[ident]
            hint = orjson.loads(unb64(kv["value"]))
            left = seen[ident] - time.monotonic()
            out.append((str(hint["service"]), str(hint["key"]), str(hint["origin"]), left))
        self._until = seen
        return out

    async def aclose(self) -> None:
        """Close the HTTP session."""
        await self.client.aclose()


class SharedHints:
    """Write this process's ejections as hints; apply the other replicas' hints."""

    def __init__(self, backend: Backend, sync: EjectionSync, poll: float = POLL) -> None:
        self.backend = backend
        self.sync = sync
        self.poll = poll
        self.origin = uuid.uuid4().hex[:12]
        self._out: asyncio.Queue[tuple[str, str, float]] = asyncio.Queue(maxsize=1024)
        self.applied = 0

    def sink(self, service: str, key: str, remaining: float) -> None:
        """Queue one ejection of this process for publication (an ``EjectionSync`` sink)."""
        if not self._out.full():
            self._out.put_nowait((service, key, remaining))

    async def run(self) -> None:
        """Publish queued ejections and apply others' hints, every ``poll`` seconds."""
        try:
            while True:
                while not self._out.empty():
                    service, key, remaining = self._out.get_nowait()
                    await self.backend.publish(service, key, self.origin, remaining)
                for service, key, origin, left in await self.backend.read():
                    if origin != self.origin and self.sync.apply(service, key, left):
                        self.applied += 1
                        log.info(
                            "instance avoided on a shared hint",
                            extra={"service": service, "instance": key, "seconds": round(left, 3)},
                        )
                await asyncio.sleep(self.poll)
        finally:
            await self.backend.aclose()


def start_hints(rt: Runtime) -> SharedHints | None:
    """Start shared hints on the runtime's registry backend when ``SHARED_HEALTH_HINTS`` asks."""
    settings = rt.settings
    if not settings.shared_health_hints:
        return None
    redis = settings.service_discovery_type == "redis"
    backend: Backend = RedisHints(settings) if redis else EtcdHints(settings)
    hints = SharedHints(backend, rt.sync)
    rt.sync.sinks.append(hints.sink)
    rt.spawn("health_hints", hints.run)
    return hints
