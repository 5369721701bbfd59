"""Redis provider: watch the layout written by ``redis_registry``, reading only what changed.

``watch()`` subscribes to the events channel first, then keeps a ``RedisView`` (``redis_view.py``)
up to date one service at a time: an event names its service and only that service is read
(a burst of events: the services it names, in batches); just after a service's earliest
instance expiry, that service is read; and every ``resync_interval`` seconds a resync walks the
services set with ``SSCAN`` in steps of ``SCAN_COUNT`` services, each step answering a digest per
service (SHA-1 in Redis over its hash and live ids), and reads whole only the services whose
digest differs from the one held. Each script call is short: no command walks the registry. A
snapshot is yielded only when something changed, with unchanged services as the same tuples.

The original ``service:{name}`` hashes are found by ``SCAN`` at each resync. Writers of that
layout publish no events, so between reads the provider polls a fingerprint every ``legacy_poll``
seconds (one ``EVALSHA`` answering ``DBSIZE`` and a SHA-1 of the known ``service:*`` hashes,
computed in Redis): a changed digest triggers a read of them, a changed ``DBSIZE`` a ``SCAN`` too;
an idle registry costs 1/``legacy_poll`` small commands a second. Bad entries are skipped with one
warning naming the key; a connection error raises ``DiscoveryError`` and the aggregator restarts
``watch()``, whose first read catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Self

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from msa_gateway.discovery.redis_registry import (
    DEFAULT_PREFIX,
    connect,
    events_channel,
    services_key,
)
from msa_gateway.discovery.redis_scripts import LEGACY_LUA, POLL_LUA, READ_LUA, SCAN_LUA
from msa_gateway.discovery.redis_view import RedisView, ServiceRead, pairs, parse_row
from msa_gateway.errors import DiscoveryError
from msa_gateway.model import Discovered, Instance
from msa_gateway.settings import GatewayConfig, Settings
from msa_gateway.tasks import Supervisor

log = logging.getLogger(__name__)

LEGACY_PATTERN = "service:*"
LEGACY_POLL = 0.5  # seconds between fingerprint polls: an original-layout change is read within ~0.5 s
EXPIRY_SLACK = 0.005  # re-read this long after the earliest expiry, so it has passed on the server


SCAN_COUNT = 16  # services per resync step: about 1 ms of Redis time at 10 instances each
READ_BATCH = 128  # instances (as last known) per read of named services: about 1 ms in Redis
MAX_EVENT_SERVICES = 256  # more services named in one burst of events: a resync instead
MAX_BURST = 1_000  # events drained in one go before falling back to a resync
SLICE = 0.002  # seconds of event draining between two turns of the event loop


@dataclasses.dataclass(slots=True)
class Wake:
    """Why ``_wait`` returned: services named by events, a full resync, the original layout."""

    names: set[str] = dataclasses.field(default_factory=set)
    full: bool = False
    rescan: bool = False  # DBSIZE changed: look for original-layout keys again
    legacy: bool = False  # the original layout's fingerprint changed
    flood: bool = False  # too many events to take one by one: drop the backlog, resync


@dataclasses.dataclass(slots=True)
class Resync:
    """A walk of the services set in progress: the ``SSCAN`` cursor and the names seen so far."""

    cursor: str = "0"
    present: set[str] = dataclasses.field(default_factory=set)
    steps: int = 0

    @property
    def done(self) -> bool:
        """Return whether the walk came back to cursor 0 (after its first step)."""
        return self.steps > 0 and self.cursor == "0"


@dataclasses.dataclass(slots=True)
class _Watch:
    """Where one ``watch()`` stands: a resync under way, the last wake-up, the original layout."""

    scan: Resync | None = dataclasses.field(default_factory=Resync)
    wake: Wake = dataclasses.field(default_factory=Wake)
    next_resync: float = 0.0
    legacy_keys: list[bytes] = dataclasses.field(default_factory=list)
    polled: tuple[int, str] | None = None  # the original layout's fingerprint at its last read


def parse_event(data: object) -> str | None:
    """Return the service an events-channel message names (None: not one of ours)."""
    try:
        doc = orjson.loads(data if isinstance(data, (bytes, str)) else b"")
    except orjson.JSONDecodeError:
        return None
    service = doc.get("service") if isinstance(doc, dict) else None
    return service if isinstance(service, str) else None


def parse_answer(payload: bytes) -> tuple[int, list[ServiceRead], Any]:
    """Parse a ``READ_LUA``/``SCAN_LUA`` answer (invalid UTF-8 becomes U+FFFD and fails validation)."""
    now, rows, *rest = orjson.loads(payload.decode("utf-8", "replace"))
    return int(now), [parse_row(row) for row in rows], rest[0] if rest else None


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
        self._scan = client.register_script(SCAN_LUA)
        self._read_legacy = client.register_script(LEGACY_LUA)
        self._fingerprint = client.register_script(POLL_LUA)
        self._clock: tuple[float, float] = (0.0, 0.0)  # (Redis ms, loop time) of the last answer
        kw = client.connection_pool.connection_kwargs
        self._where = f"{kw.get('host', kw.get('path', '?'))}:{kw.get('port', '')}"

    @classmethod
    def from_settings(
        cls, settings: Settings, config: GatewayConfig, tasks: Supervisor | None = None
    ) -> Self:
        """Connect with the ``REDIS_*`` settings, without client-side retries (the aggregator retries)."""
        del tasks  # the re-reads run inside watch(), no background task
        return cls(connect(settings, retries=0))

    # --- reads ----------------------------------------------------------------------------

    def _took(self, now_ms: int) -> None:
        self._clock = (float(now_ms), asyncio.get_running_loop().time())

    def _redis_now_ms(self) -> float:
        """Return the Redis clock now, as estimated from the last answer."""
        at_ms, at_loop = self._clock
        return at_ms + (asyncio.get_running_loop().time() - at_loop) * 1000

    async def read_names(self, view: RedisView, names: Iterable[str]) -> bool:
        """Read the named services (only those whose digest changed come back whole); return whether
        the view changed. Batches hold about ``READ_BATCH`` instances, so no call runs long in Redis."""
        changed = False
        batch: list[str] = []
        size = 0
        pending = list(dict.fromkeys(names))
        for n, name in enumerate(pending, 1):
            batch += [name, view.digest(name)]
            size += max(1, view.size(name))
            if size >= READ_BATCH or n == len(pending):
                payload = await self._read(args=[self._per_service, *batch])
                now, rows, _ = parse_answer(payload)
                self._took(now)
                changed |= view.apply(rows, now)[0]
                batch, size = [], 0
        return changed

    async def resync_step(self, view: RedisView, scan: Resync) -> bool:
        """Take one step of a resync: ``SCAN_COUNT`` services by digest, then read those that differ.

        The last step drops the services missing from the set. Return whether the view changed.
        """
        payload = await self._scan(
            keys=[services_key(self._prefix)], args=[self._per_service, scan.cursor, SCAN_COUNT]
        )
        now, rows, cursor = parse_answer(payload)
        self._took(now)
        scan.cursor = str(cursor)
        scan.steps += 1
        scan.present.update(row.name for row in rows)
        changed, stale = view.apply(rows, now)
        if stale:
            changed |= await self.read_names(view, stale)
        if scan.done:
            changed |= view.drop_missing(scan.present)
        return changed

    async def resync(self, view: RedisView) -> bool:
        """Walk the whole services set (see ``resync_step``); return whether the view changed."""
        scan, changed = Resync(), False
        while not scan.done:
            changed |= await self.resync_step(view, scan)
        return changed

    async def read_legacy(self, view: RedisView, keys: Sequence[bytes]) -> tuple[bool, tuple[int, str]]:
        """Read the original layout's hashes; return whether the view changed and their fingerprint."""
        payload = await self._read_legacy(keys=[services_key(self._prefix), *keys])
        hashes, (size, digest) = orjson.loads(payload.decode("utf-8", "replace"))
        found = {str(key): dict(pairs(fields)) for key, fields in hashes if isinstance(fields, list)}
        return view.apply_legacy(found), (int(size), str(digest))

    async def read(self) -> dict[str, tuple[Instance, ...]]:
        """Read everything once, both layouts (the CLI and tests; ``watch`` keeps its own view)."""
        view = RedisView(self._prefix)
        await self.resync(view)
        await self.read_legacy(view, await self.scan_legacy())
        return view.discovered()

    async def fingerprint(self, legacy_keys: Sequence[bytes] = ()) -> tuple[int, str]:
        """Return ``DBSIZE`` and the digest of the given legacy hashes, as ``read_legacy`` reports them."""
        size, digest = await self._fingerprint(keys=[services_key(self._prefix), *legacy_keys])
        return int(size), digest.decode() if isinstance(digest, bytes) else str(digest)

    async def scan_legacy(self) -> list[bytes]:
        """Return the keys of the original layout's ``service:{name}`` hashes."""
        if not self._legacy:
            return []
        keys = [k async for k in self._redis.scan_iter(match=LEGACY_PATTERN, count=1000, _type="hash")]
        return sorted(keys)

    # --- the watch --------------------------------------------------------------------------

    async def watch(self) -> AsyncIterator[Discovered]:
        """Yield the current snapshot, then a new one after every change; raise ``DiscoveryError``.

        A resync runs one step per turn of the loop below; between steps, waiting events are
        taken at once, so a registration is never held up behind a walk of the whole registry.
        """
        view = RedisView(self._prefix)
        state = _Watch()
        first = dirty = True  # the first snapshot waits for the first resync to end
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(events_channel(self._prefix))
            while True:
                dirty |= await self._turn(view, state)
                if view.longest_ttl_ms is not None:
                    self.longest_ttl = view.longest_ttl_ms / 1000
                if dirty and not (first and state.scan is not None):
                    first = dirty = False
                    yield view.discovered()
                state.wake = await self._next(pubsub, view, state)
                if state.wake.flood:  # the backlog says nothing a resync will not read: drop it
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
                    pubsub = self._redis.pubsub()
                    await pubsub.subscribe(events_channel(self._prefix))
                if state.wake.full:
                    state.scan = Resync()  # (again) from the start: what it read so far may have changed
        except (RedisError, OSError) as exc:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.connection_pool.disconnect()  # the next watch() starts afresh
            raise DiscoveryError(f"redis at {self._where}: {str(exc) or type(exc).__name__}") from exc
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # typed in newer redis-py

    async def _turn(self, view: RedisView, state: _Watch) -> bool:
        """Read what the last wake-up asked for, one resync step and the expired services."""
        loop = asyncio.get_running_loop()
        wake, changed = state.wake, False
        if state.scan is None and loop.time() >= state.next_resync:
            state.scan = Resync()
        if state.scan is not None:
            changed |= await self.resync_step(view, state.scan)
            if state.scan.done:
                state.scan, state.next_resync = None, loop.time() + self._resync
                wake.rescan = wake.legacy = self._legacy
        if wake.names:
            changed |= await self.read_names(view, wake.names)
        changed |= await self.read_names(view, view.due(self._redis_now_ms()))
        if wake.rescan:
            state.legacy_keys = await self.scan_legacy()
        if wake.legacy or wake.rescan:
            legacy_changed, state.polled = await self.read_legacy(view, state.legacy_keys)
            changed |= legacy_changed
        return changed

    async def _next(self, pubsub: PubSub, view: RedisView, state: _Watch) -> Wake:
        """Wait for the next thing to do (not at all while a resync is under way)."""
        if state.scan is not None:
            return await self._waiting(pubsub)
        loop = asyncio.get_running_loop()
        until = state.next_resync
        expiry = view.next_expiry_ms()
        if expiry is not None:
            until = min(until, loop.time() + (expiry - self._redis_now_ms()) / 1000 + EXPIRY_SLACK)
        legacy = (state.legacy_keys, state.polled) if self._legacy and state.polled else None
        return await self._wait(pubsub, until, legacy)

    async def _waiting(self, pubsub: PubSub) -> Wake:
        """Take the events waiting now, without waiting for more."""
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0)
        return Wake() if message is None else await self._drain(pubsub, message)

    async def _wait(
        self, pubsub: PubSub, wake: float, polled: tuple[Sequence[bytes], tuple[int, str]] | None
    ) -> Wake:
        """Return at loop time ``wake`` (an empty ``Wake``), as soon as events arrive (the services
        they name, draining any burst) or, with ``polled`` (legacy keys and their fingerprint at the
        last read), when the fingerprint changes (``rescan`` too when ``DBSIZE`` changed).
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
                return await self._drain(pubsub, message)
            if polled is not None and loop.time() < wake:
                keys, seen = polled
                now = await self.fingerprint(keys)
                if now != seen:
                    return Wake(legacy=True, rescan=now[0] != seen[0])
        return Wake()

    async def _drain(self, pubsub: PubSub, message: Mapping[str, Any]) -> Wake:
        """Collect the services named by ``message`` and every event already waiting behind it.

        A flood (more than ``MAX_EVENT_SERVICES`` services or ``MAX_BURST`` events) asks for a
        resync instead, and for the backlog to be dropped. The loop gets a turn every ``SLICE``.
        """
        loop = asyncio.get_running_loop()
        out = Wake()
        count = 0
        started = loop.time()
        while message is not None:
            name = parse_event(message.get("data"))
            if name is None:
                out.full = True
            else:
                out.names.add(name)
            count += 1
            if count >= MAX_BURST or len(out.names) > MAX_EVENT_SERVICES:
                return Wake(full=True, flood=True)
            if loop.time() - started >= SLICE:
                await asyncio.sleep(0)  # a burst of events must not hold the loop
                started = loop.time()
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0)
        return out

    async def aclose(self) -> None:
        """Close the client and its connection pool."""
        await self._redis.aclose()
