"""etcd discovery: read a key prefix, then watch it, through etcd's v3 JSON gateway.

Each instance is one key ``{prefix}{service}/{id}`` whose value is a JSON record as ``codec``
describes it (``host``, ``port``, optional ``weight``, ``metadata``, ``health_path``); the layout and the
``etcdctl`` commands that write it are documented in ``etcd_registry``. The provider reads
the whole prefix, yields a snapshot, then watches from ``header.revision + 1`` and yields a
new complete snapshot after every batch of events that changes something. A watch cancelled
by compaction triggers a fresh read. Unreachable endpoints raise ``DiscoveryError``; the
aggregator keeps the last good snapshot and restarts ``watch()``. Bad entries are skipped
with a warning naming the key.

HTTP goes to ``{endpoint}/v3/...`` (etcd 3.4 and later; 3.3 needs ``api_prefix="/v3beta"``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

import aiohttp
import orjson

from msa_gateway.discovery import codec
from msa_gateway.discovery.codec import validate_instance_id
from msa_gateway.errors import ConfigError, DiscoveryError
from msa_gateway.model import Discovered, Instance
from msa_gateway.settings import GatewayConfig, Settings, validate_service_name
from msa_gateway.tasks import Supervisor

log = logging.getLogger(__name__)

API_PREFIX = "/v3"
SOURCE = "etcd"


class EtcdApiError(DiscoveryError):
    """etcd answered with an error (``code`` is the gRPC status code, e.g. 5 = not found)."""

    def __init__(self, message: str, code: int, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


# --- pure helpers: keys, values, the instance table ----------------------------------------


def b64(data: str | bytes) -> str:
    """Return ``data`` base64-encoded, as the JSON gateway wants bytes fields."""
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str) -> bytes:
    """Decode a base64 bytes field of a gateway answer."""
    return base64.b64decode(text, validate=True)


def prefix_range_end(prefix: bytes) -> bytes:
    """Return the ``range_end`` that selects every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


def normalize_prefix(prefix: str) -> str:
    """Return ``prefix`` ending with ``/``; reject an empty one."""
    if not prefix.strip():
        raise ConfigError("environment", "ETCD_PREFIX", "must not be empty")
    return prefix if prefix.endswith("/") else prefix + "/"


def parse_endpoints(text: str) -> tuple[str, ...]:
    """Split ``ETCD_ENDPOINTS`` (comma-separated ``http(s)://host:port``) into base URLs."""
    urls = tuple(u.strip().rstrip("/") for u in text.split(",") if u.strip())
    if not urls:
        raise ConfigError("environment", "ETCD_ENDPOINTS", "no endpoint given")
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ConfigError("environment", "ETCD_ENDPOINTS", f"{url!r} must start with http:// or https://")
    return urls


def parse_key(key: str, prefix: str) -> tuple[str, str]:
    """Split ``{prefix}{service}/{id}`` into (service, id); raise ValueError saying why not."""
    if not key.startswith(prefix):
        raise ValueError("outside the prefix")
    service, sep, iid = key[len(prefix) :].partition("/")
    if not sep or not iid:
        raise ValueError("expected {prefix}{service}/{id}")
    why = validate_service_name(service)
    if why:
        raise ValueError(why)
    why = validate_instance_id(iid)
    if why:
        raise ValueError(why)
    return service, iid


class InstanceTable:
    """The instances under one prefix, updated by key; snapshots rebuild only changed services."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._services: dict[str, dict[str, Instance]] = {}
        self._tuples: dict[str, tuple[Instance, ...]] = {}

    def put(self, key: bytes, value: bytes) -> bool:
        """Apply a put of ``key``; skip (and drop any old entry for) bad data; return whether it changed."""
        try:
            text = key.decode("utf-8")
        except UnicodeDecodeError:
            log.warning("etcd: skipping key %r: not UTF-8", key)
            return False
        try:
            service, iid = parse_key(text, self._prefix)
            instance = codec.decode(value, source=SOURCE, instance_id=iid)
        except ValueError as exc:
            log.warning("etcd: skipping key %s: %s", text, exc)
            return self.delete(key)
        current = self._services.setdefault(service, {})
        if current.get(iid) == instance:
            return False
        current[iid] = instance
        self._tuples.pop(service, None)
        return True

    def delete(self, key: bytes) -> bool:
        """Apply a delete of ``key``; return whether an instance went away."""
        try:
            service, iid = parse_key(key.decode("utf-8"), self._prefix)
        except (UnicodeDecodeError, ValueError):
            return False
        current = self._services.get(service)
        if current is None or current.pop(iid, None) is None:
            return False
        if not current:
            del self._services[service]
        self._tuples.pop(service, None)
        return True

    def snapshot(self) -> dict[str, tuple[Instance, ...]]:
        """Return every service with its instances sorted by id (a new dict each time)."""
        out: dict[str, tuple[Instance, ...]] = {}
        for service, instances in self._services.items():
            cached = self._tuples.get(service)
            if cached is None:
                cached = self._tuples[service] = tuple(instances[i] for i in sorted(instances))
            out[service] = cached
        return out


# --- I/O: the JSON gateway -----------------------------------------------------------------


def _answer_error(path: str, status: int, body: bytes) -> EtcdApiError:
    try:
        data = orjson.loads(body)
        message, code = str(data.get("message") or data.get("error")), int(data.get("code", 2))
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        message, code = body[:200].decode("utf-8", "replace"), 2
    return EtcdApiError(f"etcd {path}: HTTP {status}: {message}", code, status)


class EtcdClient:
    """A small asyncio client for the v3 JSON gateway, trying ``endpoints`` in order."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        api_prefix: str = API_PREFIX,
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is required")
        self.endpoints = tuple(endpoints)
        self._api = api_prefix.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._preferred = 0

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout, raise_for_status=False)
        return self._session

    def _order(self) -> list[int]:
        n = len(self.endpoints)
        return [(self._preferred + i) % n for i in range(n)]

    async def call_at(self, endpoint: str, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``{endpoint}/v3{path}``; raise DiscoveryError on any failure."""
        url = f"{endpoint}{self._api}{path}"
        try:
            async with self._http().post(url, data=orjson.dumps(body)) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise _answer_error(path, resp.status, raw)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise DiscoveryError(f"etcd {endpoint}: {type(exc).__name__}: {exc}") from exc
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise DiscoveryError(f"etcd {path}: answer is not JSON") from None
        if not isinstance(data, dict):
            raise DiscoveryError(f"etcd {path}: answer is not a JSON object")
        return data

    async def call(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST to the first endpoint that answers; a 4xx error answer is raised at once."""
        errors: list[str] = []
        for i in self._order():
            try:
                data = await self.call_at(self.endpoints[i], path, body)
            except EtcdApiError as exc:
                if exc.status < 500:
                    raise
                errors.append(str(exc))
                continue
            except DiscoveryError as exc:
                errors.append(str(exc))
                continue
            self._preferred = i
            return data
        raise DiscoveryError("no etcd endpoint answered: " + "; ".join(errors))

    async def watch(
        self, create_request: Mapping[str, Any], idle_probe: float = 30.0
    ) -> AsyncGenerator[Any, None]:
        """Yield each ``result`` of one watch stream; raise DiscoveryError when the stream breaks.

        After ``idle_probe`` seconds without data the same endpoint is probed with a cheap
        range, so that a silently unreachable endpoint is noticed.
        """
        body = orjson.dumps({"create_request": create_request})
        endpoint = self.endpoints[self._preferred]
        url = f"{endpoint}{self._api}/watch"
        try:
            async with self._http().post(url, data=body, timeout=self._stream_timeout) as resp:
                if resp.status != 200:
                    raise _answer_error("/watch", resp.status, await resp.read())
                buf = b""
                while True:
                    try:
                        async with asyncio.timeout(idle_probe):
                            chunk = await resp.content.readany()
                    except TimeoutError:
                        await self.call_at(endpoint, "/maintenance/status", {})
                        continue
                    if not chunk:
                        raise DiscoveryError(f"etcd {endpoint}: watch stream closed")
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield self._watch_result(endpoint, line)
        except (aiohttp.ClientError, OSError) as exc:
            raise DiscoveryError(f"etcd {endpoint}: watch failed: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _watch_result(endpoint: str, line: bytes) -> Any:
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise DiscoveryError(f"etcd {endpoint}: watch sent non-JSON data") from None
        if not isinstance(msg, dict) or "result" not in msg:
            err = msg.get("error") if isinstance(msg, dict) else msg
            raise DiscoveryError(f"etcd {endpoint}: watch error: {err}")
        return msg["result"]

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None


LEASES_SAMPLED = 8  # leases whose TTL each full read looks up


# --- the provider --------------------------------------------------------------------------


class EtcdProvider:
    """Instances from etcd: ``{prefix}{service}/{id}`` -> JSON, read once and then watched."""

    name = "etcd"

    def __init__(self, client: EtcdClient, prefix: str, *, idle_probe: float = 30.0) -> None:
        self._client = client
        self.prefix = normalize_prefix(prefix)
        self._key = self.prefix.encode()
        self._idle_probe = idle_probe
        self.longest_ttl: float | None = None  # seconds; read by the aggregator for its recovery grace

    @classmethod
    def from_settings(
        cls, settings: Settings, config: GatewayConfig, tasks: Supervisor | None = None
    ) -> EtcdProvider:
        """Build from ``ETCD_ENDPOINTS`` and ``ETCD_PREFIX`` (``config`` holds no etcd options)."""
        del config, tasks  # the watch runs inside watch(), no background task
        return cls(EtcdClient(parse_endpoints(settings.etcd_endpoints)), settings.etcd_prefix)

    async def load(self) -> tuple[InstanceTable, int]:
        """Read the whole prefix; return the table and the revision it was read at."""
        answer = await self._client.call(
            "/kv/range", {"key": b64(self._key), "range_end": b64(prefix_range_end(self._key))}
        )
        table = InstanceTable(self.prefix)
        leases: set[str] = set()
        for kv in answer.get("kvs", ()):
            if kv.get("lease") and len(leases) < LEASES_SAMPLED:
                leases.add(str(kv["lease"]))
            try:
                key, value = unb64(kv["key"]), unb64(kv.get("value", ""))
            except (KeyError, TypeError, binascii.Error):
                log.warning("etcd: skipping an entry with undecodable key or value: %r", kv)
                continue
            table.put(key, value)
        for lease in leases:
            await self._note_lease(lease)
        return table, int(answer["header"]["revision"])

    async def _note_lease(self, lease: str) -> None:
        """Remember the longest lease TTL granted (the recovery grace follows it)."""
        try:
            answer = await self._client.call("/lease/timetolive", {"ID": lease})
            granted = float(answer.get("grantedTTL", 0))
        except (DiscoveryError, TypeError, ValueError):
            return
        if granted > 0:
            self.longest_ttl = max(self.longest_ttl or 0.0, granted)

    async def watch(self) -> AsyncGenerator[Discovered, None]:
        """Yield the prefix's complete snapshot, then a new one after each change."""
        while True:
            table, revision = await self.load()
            yield table.snapshot()
            request = {
                "key": b64(self._key),
                "range_end": b64(prefix_range_end(self._key)),
                "start_revision": str(revision + 1),
            }
            stream = self._client.watch(request, idle_probe=self._idle_probe)
            async with contextlib.aclosing(stream):
                async for result in stream:
                    if result.get("canceled"):
                        compacted = int(result.get("compact_revision", 0))
                        if compacted:
                            log.info("etcd: revision %d was compacted away; re-reading", revision + 1)
                            break
                        raise DiscoveryError(f"etcd: watch cancelled: {result.get('cancel_reason', '?')}")
                    changed = False
                    for event in result.get("events", ()):
                        changed |= self._apply(table, event)
                    if changed:
                        yield table.snapshot()

    @staticmethod
    def _apply(table: InstanceTable, event: Mapping[str, Any]) -> bool:
        kv = event.get("kv", {})
        try:
            key = unb64(kv["key"])
            if event.get("type") == "DELETE":
                return table.delete(key)
            return table.put(key, unb64(kv.get("value", "")))
        except (KeyError, TypeError, binascii.Error):
            log.warning("etcd: skipping an undecodable watch event: %r", event)
            return False

    async def aclose(self) -> None:
        """Close the HTTP session."""
        await self._client.aclose()
