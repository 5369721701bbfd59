"""Redis provider: watch the layout written by ``redis_registry`` and emit complete snapshots.

``watch()`` subscribes to the events channel first, then re-reads everything (one script with
the server's ``TIME``) on every event, just after the earliest instance expiry, and every
``resync_interval`` seconds; the resync also ``SCAN``s for the original ``service:{name}``
hashes. Writers of that original layout publish no events, so between reads the provider polls
a fingerprint every ``legacy_poll`` seconds (one ``EVALSHA`` answering ``DBSIZE`` and a SHA-1 of
the known ``service:*`` hashes, computed in Redis): a changed digest triggers a read, a changed
``DBSIZE`` (a key came or went) a ``SCAN`` and a read; an idle registry costs 1/``legacy_poll``
small commands a second. Bad entries are skipped with one warning naming the key; a connection
error raises ``DiscoveryError`` and the aggregator restarts ``watch()``, whose first read catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Self

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from msa_gateway.discovery import codec
from msa_gateway.discovery.codec import valid_host, valid_port, validate_instance_id
from msa_gateway.discovery.redis_registry import (
    DEFAULT_PREFIX,
    connect,
    events_channel,
    expiry_key,
    instances_key,
    services_key,
)
from msa_gateway.errors import DiscoveryError
from msa_gateway.model import Discovered, Instance
from msa_gateway.settings import GatewayConfig, Settings, validate_service_name
from msa_gateway.tasks import Supervisor

log = logging.getLogger(__name__)

SOURCE = "redis"
LEGACY_PATTERN = "service:*"
LEGACY_POLL = 0.5  # seconds between fingerprint polls: an original-layout change is read within ~0.5 s
EXPIRY_SLACK = 0.005  # re-read this long after the earliest expiry, so it has passed on the server


# The fingerprint of the original layout: DBSIZE (a new service:* key changes it) and a SHA-1 over
# the known service:* hashes (KEYS[2..]) in field order, each string length-prefixed.
_FINGERPRINT = """
local function fingerprint()
  local parts = {}
  for i = 2, #KEYS do
    local kind = redis.call('TYPE', KEYS[i]).ok
    local items = {}
    if kind == 'hash' then
      local flat = redis.call('HGETALL', KEYS[i])
      for j = 1, #flat, 2 do
        items[#items + 1] = #flat[j] .. ':' .. flat[j] .. #flat[j + 1] .. ':' .. flat[j + 1]
      end
      table.sort(items)
    end
    parts[#parts + 1] = #KEYS[i] .. ':' .. KEYS[i] .. kind .. '{' .. table.concat(items) .. '}'
  end
  return {redis.call('DBSIZE'), redis.sha1hex(table.concat(parts))}
end
"""

# KEYS: the services set, then legacy hashes. Answers [DBSIZE, digest] (see _FINGERPRINT).
POLL_LUA = _FINGERPRINT + "return fingerprint()\n"

# KEYS: the services set, then legacy hashes. ARGV: the per-service key prefix "P:service:".
# Answers one JSON text: [now_ms, [[name, hash, zset], ...], [[key, hash], ...], [dbsize, digest]]
# where a hash or zset is a flat [field, value, ...] list ({} when empty or missing, false when of
# another type).
READ_LUA = (
    _FINGERPRINT
    + """
local t = redis.call('TIME')
local function get(key, kind, ...)
  local found = redis.call('TYPE', key).ok
  if found == 'none' then return {} end
  if found ~= kind then return false end
  return redis.call(...)
end
local services = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local ikey, ekey = ARGV[1] .. name .. ':instances', ARGV[1] .. name .. ':expiry'
  services[#services + 1] = {
    name,
    get(ikey, 'hash', 'HGETALL', ikey),
    get(ekey, 'zset', 'ZRANGE', ekey, 0, -1, 'WITHSCORES'),
  }
end
local legacy = {}
for i = 2, #KEYS do
  legacy[#legacy + 1] = {KEYS[i], get(KEYS[i], 'hash', 'HGETALL', KEYS[i])}
end
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
return cjson.encode({now, services, legacy, fingerprint()})
"""
)


@dataclasses.dataclass(frozen=True, slots=True)
class RawService:
    """What one read returned for one service of the current layout."""

    name: str
    instances: Mapping[str, str]
    expiry: Sequence[tuple[str, float]]


@dataclasses.dataclass(frozen=True, slots=True)
class Reading:
    """A parsed read: the snapshot, when the next live instance expires, what was skipped, the fingerprint."""

    snapshot: dict[str, tuple[Instance, ...]]
    now_ms: int
    next_expiry_ms: float | None
    problems: tuple[str, ...]
    fingerprint: tuple[int, str] | None = None
    longest_ttl_ms: float | None = None  # the longest remaining lifetime of a live instance


def parse_legacy(instance_id: str, raw: str) -> Instance:
    """Parse a ``"host:port"`` value of the original layout; raise ``ValueError`` if it is not one."""
    text = raw.strip()
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected 'host:port', got {text!r}")
    return Instance(id=instance_id, host=valid_host(host), port=valid_port(int(port)), source=SOURCE)


def _name(name: str) -> str:
    why = validate_service_name(name)
    if why:
        raise ValueError(why)
    return name


def _id(instance_id: str) -> str:
    why = validate_instance_id(instance_id)
    if why:
        raise ValueError(f"instance id {instance_id!r}: {why}")
    return instance_id


def build_snapshot(
    now_ms: int,
    services: Sequence[RawService],
    legacy: Mapping[str, Mapping[str, str]] | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> Reading:
    """Turn one read into a snapshot of live instances, skipping (and reporting) bad entries."""
    found: dict[str, dict[str, Instance]] = {}
    problems: list[str] = []
    next_expiry: float | None = None
    last_expiry: float | None = None
    for svc in services:
        try:
            name = _name(svc.name)
        except ValueError as exc:
            problems.append(f"{services_key(prefix)} member {svc.name!r}: {exc}")
            continue
        key = instances_key(prefix, name)
        scores = dict(svc.expiry)
        for raw_id, raw in svc.instances.items():
            score = scores.get(raw_id)
            if score is not None and score <= now_ms:
                continue  # expired: not yet purged by a registrar, but gone
            try:
                instance_id = _id(raw_id)
                if score is None:
                    raise ValueError(f"no expiry entry in {expiry_key(prefix, name)}")
                instance = codec.decode(raw, source=SOURCE, instance_id=instance_id)
            except ValueError as exc:
                problems.append(f"{key} field {raw_id!r}: {exc}")
                continue
            found.setdefault(name, {})[instance_id] = instance
            if score != float("inf"):
                next_expiry = score if next_expiry is None else min(next_expiry, score)
                last_expiry = score if last_expiry is None else max(last_expiry, score)
    for key, fields in (legacy or {}).items():
        try:
            name = _name(key.removeprefix("service:"))
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
            continue
        current = found.setdefault(name, {})
        for raw_id, raw in fields.items():
            try:
                instance_id = _id(raw_id)
                instance = parse_legacy(instance_id, raw)
            except ValueError as exc:
                problems.append(f"{key} field {raw_id!r}: {exc}")
                continue
            if instance_id in current:
                problems.append(f"{key} field {instance_id!r}: shadowed by {instances_key(prefix, name)}")
                continue
            current[instance_id] = instance
    snapshot = {
        name: tuple(insts[i] for i in sorted(insts)) for name, insts in sorted(found.items()) if insts
    }
    longest = None if last_expiry is None else last_expiry - now_ms
    return Reading(snapshot, now_ms, next_expiry, tuple(problems), longest_ttl_ms=longest)


def _pairs(flat: object) -> list[tuple[str, str]]:
    """Pair up a flat ``[k1, v1, k2, v2]`` reply (an empty Lua table arrives as ``{}``)."""
    if not isinstance(flat, list):
        return []
    return list(zip(flat[::2], flat[1::2], strict=True))


def parse_read(payload: bytes, prefix: str = DEFAULT_PREFIX) -> Reading:
    """Parse the JSON answer of ``READ_LUA`` (invalid UTF-8 becomes U+FFFD and fails validation)."""
    now, raw_services, raw_legacy, *rest = orjson.loads(payload.decode("utf-8", "replace"))
    services: list[RawService] = []
    problems: list[str] = []
    for name, fields, scores in raw_services:
        if fields is False or scores is False:
            key = instances_key(prefix, name) if fields is False else expiry_key(prefix, name)
            problems.append(f"{key}: wrong type (want a hash and a zset)")
            continue
        expiry = [(member, float(score)) for member, score in _pairs(scores)]
        services.append(RawService(name, dict(_pairs(fields)), expiry))
    legacy = {key: dict(_pairs(fields)) for key, fields in raw_legacy if fields}
    reading = build_snapshot(int(now), services, legacy, prefix)
    fingerprint = (int(rest[0][0]), str(rest[0][1])) if rest else None
    return dataclasses.replace(reading, problems=(*problems, *reading.problems), fingerprint=fingerprint)


class RedisProvider:
    """Instances registered in Redis (see ``redis_registry`` for the layout)."""

    name = "redis"

    def __init__(
        self,
        client: Redis,
        prefix: str = DEFAULT_PREFIX,
        resync_interval: float = 5.0,
        legacy: bool = True,
        legacy_poll: float = LEGACY_POLL,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._resync = resync_interval
        self._legacy = legacy
        self._poll = legacy_poll
        self.longest_ttl: float | None = None  # seconds; read by the aggregator for its recovery grace
        self._per_service = f"{prefix}:service:"
        self._read = client.register_script(READ_LUA)
        self._fingerprint = client.register_script(POLL_LUA)
        kw = client.connection_pool.connection_kwargs
        self._where = f"{kw.get('host', kw.get('path', '?'))}:{kw.get('port', '')}"

    @classmethod
    def from_settings(
        cls, settings: Settings, config: GatewayConfig, tasks: Supervisor | None = None
    ) -> Self:
        """Connect with the ``REDIS_*`` settings, without client-side retries (the aggregator retries)."""
        del tasks  # the re-reads run inside watch(), no background task
        return cls(connect(settings, retries=0))

    async def read(self, legacy_keys: Sequence[bytes] = ()) -> Reading:
        """Read every service (and the given legacy hashes) in one atomic script."""
        payload = await self._read(keys=[services_key(self._prefix), *legacy_keys], args=[self._per_service])
        return parse_read(payload, self._prefix)

    async def fingerprint(self, legacy_keys: Sequence[bytes] = ()) -> tuple[int, str]:
        """Return ``DBSIZE`` and the digest of the given legacy hashes, as ``read()`` reports them."""
        size, digest = await self._fingerprint(keys=[services_key(self._prefix), *legacy_keys])
        return int(size), digest.decode() if isinstance(digest, bytes) else str(digest)

    async def scan_legacy(self) -> list[bytes]:
        """Return the keys of the original layout's ``service:{name}`` hashes."""
        if not self._legacy:
            return []
        keys = [k async for k in self._redis.scan_iter(match=LEGACY_PATTERN, count=1000, _type="hash")]
        return sorted(keys)

    async def watch(self) -> AsyncIterator[Discovered]:
        """Yield the current snapshot, then a new one after every change; raise ``DiscoveryError``."""
        loop = asyncio.get_running_loop()
        pubsub = self._redis.pubsub()
        last: dict[str, tuple[Instance, ...]] | None = None
        reported: frozenset[str] = frozenset()
        legacy_keys: list[bytes] = []
        next_resync = 0.0
        rescan = False
        try:
            await pubsub.subscribe(events_channel(self._prefix))
            while True:
                if rescan or loop.time() >= next_resync:
                    legacy_keys = await self.scan_legacy()
                    next_resync = loop.time() + self._resync
                reading = await self.read(legacy_keys)
                for problem in reading.problems:
                    if problem not in reported:
                        log.warning("redis discovery: skipping %s", problem)
                reported = frozenset(reading.problems)
                if reading.longest_ttl_ms is not None:
                    self.longest_ttl = max(self.longest_ttl or 0.0, reading.longest_ttl_ms / 1000)
                if reading.snapshot != last:
                    last = reading.snapshot
                    yield last
                wake = next_resync
                if reading.next_expiry_ms is not None:
                    delay = (reading.next_expiry_ms - reading.now_ms) / 1000 + EXPIRY_SLACK
                    wake = min(wake, loop.time() + delay)
                polled = (legacy_keys, reading.fingerprint) if self._legacy and reading.fingerprint else None
                rescan = await self._wait(pubsub, wake, polled)
        except (RedisError, OSError) as exc:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.connection_pool.disconnect()  # the next watch() starts afresh
            raise DiscoveryError(f"redis at {self._where}: {str(exc) or type(exc).__name__}") from exc
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # typed in newer redis-py

    async def _wait(
        self, pubsub: PubSub, wake: float, polled: tuple[Sequence[bytes], tuple[int, str]] | None
    ) -> bool:
        """Return at loop time ``wake``, as soon as an event arrives (draining any burst) or, with
        ``polled`` (legacy keys and their fingerprint at the last read), when the fingerprint
        changes; answer True when ``DBSIZE`` changed, so the legacy keys must be scanned again.
        """
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        while (remaining := wake - loop.time()) > 0:
            timeout = remaining if polled is None else min(remaining, self._poll)
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
            if task is not None and task.cancelling():
                # redis-py's read timeout can swallow a cancellation that lands as it fires
                # (redis-py #2551): honour it here, or the watch would never stop.
                raise asyncio.CancelledError
            if message is not None:
                while await pubsub.get_message(ignore_subscribe_messages=True, timeout=0) is not None:
                    pass
                return False
            if polled is not None and loop.time() < wake:
                keys, seen = polled
                now = await self.fingerprint(keys)
                if now != seen:
                    return now[0] != seen[0]
        return False

    async def aclose(self) -> None:
        """Close the client and its connection pool."""
        await self._redis.aclose()
