"""Register instances in Redis, where the Redis provider finds them.

Key layout (``P`` is the prefix, ``msa-gateway`` by default; Redis 6.0+, one plain Redis or a
primary, not Cluster)::

    P:services                    SET   of service names
    P:service:{name}:instances    HASH  field = instance id, value = instance JSON (below)
    P:service:{name}:expiry       ZSET  member = instance id, score = expiry in Unix ms by Redis TIME
                                        (+inf: never expires)
    P:events                      pub/sub channel, message = {"op", "service", "id"} JSON

Instance JSON: the record of ``codec`` (``{"host", "port", "weight", "metadata", "health_path",
...}``; only ``host`` and ``port`` are required, unknown fields are ignored, the hash field is
the id).

An instance is live while its score is greater than the Redis server's ``TIME`` in ms. The hash
and the zset carry a ``PEXPIREAT`` at their highest score, so a service whose instances all
crashed leaves nothing behind. Service names match ``[A-Za-z0-9][A-Za-z0-9._~-]{0,127}`` (and are
not a gateway endpoint such as ``health``); instance ids are 1-256 characters without whitespace,
control characters or ``/`` (default ``host:port``, ``[v6]:port``).

Every write is one Lua script (``EVAL``), so a client in any language registers by running the
same steps; ``now`` is ``TIME`` in ms, "purge" removes members with score <= now from both the
zset and the hash, "settle" sets ``PEXPIREAT`` on hash and zset to the highest score (``PERSIST``
when it is +inf, ``DEL`` both when the zset is empty):

- register: purge; ``HSET instances id json``; ``ZADD expiry now+ttl_ms id`` (``+inf`` for no TTL);
  ``SADD services name``, then ``SRANDMEMBER services 2`` and ``SREM`` those whose instances hash
  is gone (a service whose instances all expired leaves the set over later registrations, at a
  constant cost per call: no step walks every service); settle; ``PUBLISH P:events
  {"op":"register",...}``.
- heartbeat (every ttl/3): purge; if the id is still in both keys ``ZADD expiry XX now+ttl_ms id``
  and settle, else answer 0 and the client registers again.
- deregister: purge; ``HDEL``, ``ZREM``; if the zset is now empty ``DEL`` both and ``SREM services
  name``, else settle; ``PUBLISH P:events {"op":"deregister",...}`` when the id was there.

Gateways re-read the service an event names (only that service), the services whose earliest
instance expiry passed, and every few seconds the whole set in small steps that compare a digest
per service and fetch only the services that differ, so a lost message only delays a change.
The original layout, ``HSET service:{name} {id} "host:port"`` (no expiry, no events), is read
too: gateways poll a fingerprint of it twice a second.
"""

from __future__ import annotations

import asyncio
import logging
import math
from types import TracebackType
from typing import Any, Self

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from msa_gateway.discovery import codec
from msa_gateway.discovery.base import Registrar
from msa_gateway.discovery.codec import check_ttl, validate_instance_id
from msa_gateway.errors import DiscoveryError
from msa_gateway.model import Instance
from msa_gateway.settings import Settings, validate_service_name
from msa_gateway.tasks import Supervised, Supervisor

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "msa-gateway"

_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function purge(hash, zset)
  local dead = redis.call('ZRANGEBYSCORE', zset, '-inf', now)
  for _, id in ipairs(dead) do redis.call('HDEL', hash, id) end
  if #dead > 0 then redis.call('ZREMRANGEBYSCORE', zset, '-inf', now) end
end
local function settle(hash, zset)
  local top = redis.call('ZRANGE', zset, -1, -1, 'WITHSCORES')
  if #top == 0 then
    redis.call('DEL', hash, zset)
  elseif top[2] == 'inf' then
    redis.call('PERSIST', hash)
    redis.call('PERSIST', zset)
  else
    local at = string.format('%d', math.ceil(tonumber(top[2])))
    redis.call('PEXPIREAT', hash, at)
    redis.call('PEXPIREAT', zset, at)
  end
end
local function expiry(ttl_ms)
  if ttl_ms == 0 then return '+inf' end
  return string.format('%d', now + ttl_ms)
end
"""

# KEYS: services, instances, expiry. ARGV: service, id, json, ttl_ms (0 = never), channel, key prefix.
REGISTER_LUA = (
    _PRELUDE
    + """
purge(KEYS[2], KEYS[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[3], expiry(tonumber(ARGV[4])), ARGV[2])
redis.call('SADD', KEYS[1], ARGV[1])
for _, name in ipairs(redis.call('SRANDMEMBER', KEYS[1], 2)) do
  if redis.call('EXISTS', ARGV[6] .. name .. ':instances') == 0 then redis.call('SREM', KEYS[1], name) end
end
settle(KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[5], cjson.encode({op = 'register', service = ARGV[1], id = ARGV[2]}))
return 1
"""
)

# KEYS: instances, expiry. ARGV: id, ttl_ms (0 = never).
HEARTBEAT_LUA = (
    _PRELUDE
    + """
purge(KEYS[1], KEYS[2])
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 or not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  settle(KEYS[1], KEYS[2])
  return 0
end
redis.call('ZADD', KEYS[2], 'XX', expiry(tonumber(ARGV[2])), ARGV[1])
settle(KEYS[1], KEYS[2])
return 1
"""
)

# KEYS: services, instances, expiry. ARGV: service, id, channel.
DEREGISTER_LUA = (
    _PRELUDE
    + """
purge(KEYS[2], KEYS[3])
local existed = redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
if redis.call('ZCARD', KEYS[3]) == 0 then
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('SREM', KEYS[1], ARGV[1])
else
  settle(KEYS[2], KEYS[3])
end
if existed == 1 then
  redis.call('PUBLISH', ARGV[3], cjson.encode({op = 'deregister', service = ARGV[1], id = ARGV[2]}))
end
return existed
"""
)


def services_key(prefix: str) -> str:
    """Return the key of the set of service names."""
    return f"{prefix}:services"


def instances_key(prefix: str, service: str) -> str:
    """Return the key of the hash of ``service``'s instances."""
    return f"{prefix}:service:{service}:instances"


def expiry_key(prefix: str, service: str) -> str:
    """Return the key of the zset of ``service``'s instance expiry times."""
    return f"{prefix}:service:{service}:expiry"


def events_channel(prefix: str) -> str:
    """Return the pub/sub channel change events go to."""
    return f"{prefix}:events"


def connect(settings: Settings, retries: int = 0, timeout: float | None = None) -> Redis:
    """Build an asyncio Redis client from ``REDIS_URL`` or ``REDIS_HOST``/``PORT``/``PASSWORD``/``DB``.

    ``timeout`` (seconds) replaces the default connect and read timeouts (rate limiting's short one).
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": timeout or 2.0,
        "socket_timeout": timeout or 5.0,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries),
        "decode_responses": False,
    }
    if settings.redis_password is not None:
        options["password"] = settings.redis_password
    if settings.redis_url:
        return Redis.from_url(settings.redis_url, db=settings.redis_db, **options)
    return Redis(host=settings.redis_host, port=settings.redis_port, db=settings.redis_db, **options)


def ttl_ms(ttl: float) -> int:
    """Return ``ttl`` seconds as whole milliseconds, 0 for ``math.inf`` (never expires)."""
    if math.isinf(check_ttl(ttl)):
        return 0
    return max(1, round(ttl * 1000))


def _check(service: str, instance_id: str) -> None:
    why = validate_service_name(service) or validate_instance_id(instance_id)
    if why:
        raise ValueError(why)


class RedisRegistrar:
    """Write instances with a TTL into Redis, atomically, and announce every change."""

    def __init__(self, client: Redis, prefix: str = DEFAULT_PREFIX) -> None:
        self._redis = client
        self._prefix = prefix
        self._register = client.register_script(REGISTER_LUA)
        self._heartbeat = client.register_script(HEARTBEAT_LUA)
        self._deregister = client.register_script(DEREGISTER_LUA)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """Connect with the ``REDIS_*`` settings."""
        return cls(connect(settings, retries=2))

    async def register(self, service: str, instance: Instance, ttl: float) -> None:
        """Add or replace ``instance``; it expires ``ttl`` seconds (Redis clock) after its last heartbeat."""
        instance = codec.normalize(instance)
        _check(service, instance.id)
        keys = [services_key(self._prefix), *self._keys(service)]
        args: list[str | bytes | int] = [
            service,
            instance.id,
            codec.encode(instance),
            ttl_ms(ttl),
            events_channel(self._prefix),
            f"{self._prefix}:service:",
        ]
        await self._run("register", self._register(keys=keys, args=args))

    async def heartbeat(self, service: str, instance_id: str, ttl: float) -> bool:
        """Extend the instance's lifetime; return False when it expired or was removed."""
        _check(service, instance_id)
        args: list[str | int] = [instance_id, ttl_ms(ttl)]
        return bool(await self._run("heartbeat", self._heartbeat(keys=self._keys(service), args=args)))

    async def deregister(self, service: str, instance_id: str) -> bool:
        """Remove the instance; return False when it was not registered (or had expired)."""
        _check(service, instance_id)
        keys = [services_key(self._prefix), *self._keys(service)]
        args = [service, instance_id, events_channel(self._prefix)]
        return bool(await self._run("deregister", self._deregister(keys=keys, args=args)))

    async def aclose(self) -> None:
        """Close the client and its connection pool."""
        await self._redis.aclose()

    def _keys(self, service: str) -> list[str]:
        return [instances_key(self._prefix, service), expiry_key(self._prefix, service)]

    async def _run(self, what: str, call: Any) -> Any:
        try:
            return await call
        except RedisError as exc:
            raise DiscoveryError(f"redis {what} failed: {exc}") from exc


class ServiceRegistration:
    """Keep one instance registered while the block runs: ``async with ServiceRegistration(...)``.

    Registers on entry (failing loudly), heartbeats every ``ttl / 3`` seconds in a named task
    (re-registering when the entry expired, logging and retrying when Redis is unreachable), and
    deregisters on exit.
    """

    def __init__(
        self,
        registrar: Registrar,
        service: str,
        instance: Instance,
        ttl: float = 10.0,
        interval: float | None = None,
        *,
        tasks: Supervisor | None = None,
    ) -> None:
        ttl_ms(ttl)  # validate early
        self.registrar, self.service, self.instance, self.ttl = registrar, service, instance, ttl
        if interval is None:
            interval = min(ttl / 3, 60.0) if math.isfinite(ttl) else 60.0
        self.interval = interval
        self.heartbeats = 0
        self._tasks = tasks or Supervisor()
        self._task: Supervised | None = None

    async def __aenter__(self) -> Self:
        await self.registrar.register(self.service, self.instance, self.ttl)
        self._task = self._tasks.spawn(
            "redis_heartbeat", self._beat, key=f"{self.service}/{self.instance.id}"
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop(deregister=True)

    async def stop(self, deregister: bool = True) -> None:
        """Stop heartbeating and (by default) deregister; a registry outage is logged, not raised."""
        task, self._task = self._task, None
        if task is not None:
            await task.stop()
        if deregister:
            try:
                await self.registrar.deregister(self.service, self.instance.id)
            except DiscoveryError as exc:
                log.warning("could not deregister %s/%s: %s", self.service, self.instance.id, exc)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                if not await self.registrar.heartbeat(self.service, self.instance.id, self.ttl):
                    log.info("%s/%s had expired: registering again", self.service, self.instance.id)
                    await self.registrar.register(self.service, self.instance, self.ttl)
                self.heartbeats += 1
            except DiscoveryError as exc:
                log.warning("heartbeat for %s/%s failed: %s", self.service, self.instance.id, exc)
