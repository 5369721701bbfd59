"""Consul discovery: watch the catalog and each service's health with blocking queries.

Service names come from ``GET /v1/catalog/services`` (``consul`` itself skipped), instances from
``GET /v1/health/service/:name``: the health API, so Consul's own checks decide who is eligible
(all checks passing; with ``allow_warning`` also warning, weighted by ``Weights.Warning``). One
blocking query watches the catalog and one watches each service; every change yields a complete
snapshot. Blocking follows Consul's "Blocking Queries" page: ``index``/``wait``, the index from
``X-Consul-Index``, reset to 0 when it goes backwards, never below 1 after a blocking answer, a read
timeout above ``wait + wait/16`` (the server's jitter), and a token bucket so a churning result
degrades into polling instead of a busy loop.

Any failure (connection refused or reset, timeout, a 403 for the ACL token, an answer that is not
Consul's) raises ``DiscoveryError`` out of ``watch()``; the aggregator keeps the last good snapshot
and restarts ``watch()`` with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import orjson

from msa_gateway.discovery.codec import (
    MAX_WEIGHT,
    RecordError,
    valid_host,
    valid_metadata,
    validate_instance_id,
)
from msa_gateway.errors import DiscoveryError
from msa_gateway.model import Discovered, Instance
from msa_gateway.settings import validate_service_name
from msa_gateway.tasks import Supervised, Supervisor

if TYPE_CHECKING:
    from msa_gateway.settings import GatewayConfig, Settings

log = logging.getLogger(__name__)

HEALTH_PATH_META = "health_path"
_BAD_STATUS = "critical"


# --- pure parsing (no I/O) ------------------------------------------------------------------


def next_index(previous: int, returned: int) -> int:
    """Return the index for the next blocking query, per Consul's "Blocking Queries" rules.

    An answer's index is never validly 0, so anything below 1 becomes 1 (always safe to block on,
    and the next request really blocks). Otherwise an index lower than the previous one resets the
    loop to 0: one non-blocking read, then blocking from the index that read returns.
    """
    if returned < 1:
        return 1
    if returned < previous:
        return 0
    return returned


def read_timeout(wait: float, margin: float) -> float:
    """Return the client read timeout for a blocking query: above ``wait`` plus Consul's jitter."""
    return wait + wait / 16 + margin


def format_wait(seconds: float) -> str:
    """Format ``seconds`` as a Go duration Consul accepts (``30s``, ``1500ms``)."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def parse_service_names(body: object) -> frozenset[str]:
    """Return the service names of a ``/v1/catalog/services`` answer, without ``consul``."""
    if not isinstance(body, dict):
        raise DiscoveryError(f"Consul /v1/catalog/services answered {type(body).__name__}, not an object")
    return frozenset(name for name in body if isinstance(name, str) and name != "consul")


def aggregate_status(checks: object) -> str:
    """Return ``passing``, ``warning`` or ``critical`` for a list of health checks (worst wins).

    Maintenance mode is a critical check in Consul; any status Consul does not document counts as
    critical, so an unknown state never makes an instance eligible.
    """
    worst = "passing"
    for check in checks if isinstance(checks, list) else ():
        status = check.get("Status") if isinstance(check, dict) else None
        if status == "warning":
            worst = "warning"
        elif status != "passing":
            return _BAD_STATUS
    return worst


def _warn_once(seen: set[tuple[str, str, str]] | None, service: str, sid: str, reason: str) -> None:
    key = (service, sid, reason)
    if seen is not None:
        if key in seen:
            return
        seen.add(key)
    log.warning("consul: skipping instance %r of service %r: %s", sid, service, reason)


def parse_entry(  # noqa: PLR0911 - one return per kind of unusable catalog entry
    service: str, entry: object, *, allow_warning: bool, seen: set[tuple[str, str, str]] | None = None
) -> Instance | None:
    """Turn one ``/v1/health/service`` entry into an ``Instance``, or None when it is not eligible.

    Bad data (no ID, a missing or out-of-range port, no address) is skipped with a warning naming the
    service and the instance ID (once per run when ``seen`` is given).
    """
    if not isinstance(entry, dict) or not isinstance(entry.get("Service"), dict):
        _warn_once(seen, service, "?", "entry has no Service object")
        return None
    svc: dict[str, Any] = entry["Service"]
    node_raw = entry.get("Node")
    node: dict[str, Any] = node_raw if isinstance(node_raw, dict) else {}
    sid = svc.get("ID")
    if not isinstance(sid, str) or not sid:
        _warn_once(seen, service, repr(sid), "missing Service.ID")
        return None
    why = validate_instance_id(sid)
    if why:
        _warn_once(seen, service, sid, why)
        return None
    status = aggregate_status(entry.get("Checks"))
    if status == _BAD_STATUS or (status == "warning" and not allow_warning):
        return None
    port = svc.get("Port")
    if port is None or port == 0:
        _warn_once(seen, service, sid, "missing port")
        return None
    if not isinstance(port, int) or isinstance(port, bool):
        _warn_once(seen, service, sid, f"port {port!r} is not an integer")
        return None
    if not 1 <= port <= 65535:
        _warn_once(seen, service, sid, f"port {port} out of range 1-65535")
        return None
    address = svc.get("Address") or node.get("Address")
    if not address:
        _warn_once(seen, service, sid, "neither Service.Address nor Node.Address is set")
        return None
    try:
        host = valid_host(address)
        meta = dict(valid_metadata(svc.get("Meta")))
    except RecordError as exc:
        _warn_once(seen, service, sid, str(exc))
        return None
    weights_raw = svc.get("Weights")
    weights: dict[str, Any] = weights_raw if isinstance(weights_raw, dict) else {}
    raw_weight = weights.get("Warning" if status == "warning" else "Passing", 1)
    weight = raw_weight if isinstance(raw_weight, int) and not isinstance(raw_weight, bool) else 1
    if weight <= 0:
        return None  # Consul's "do not send traffic while warning": Weights.Warning = 0
    tags = [t for t in svc.get("Tags") or () if isinstance(t, str)]
    if tags:
        meta["tags"] = ",".join(tags)
    health_path = meta.get(HEALTH_PATH_META)
    return Instance(
        id=sid,
        host=host,
        port=port,
        weight=min(weight, MAX_WEIGHT),
        health_path=health_path if health_path and health_path.startswith("/") else None,
        metadata=tuple(sorted(meta.items())),
        source="consul",
    )


def parse_health(
    service: str, body: object, *, allow_warning: bool, seen: set[tuple[str, str, str]] | None = None
) -> tuple[Instance, ...]:
    """Return the eligible instances of a ``/v1/health/service/:service`` answer, sorted by ID."""
    if not isinstance(body, list):
        raise DiscoveryError(
            f"Consul /v1/health/service/{service} answered {type(body).__name__}, not a list"
        )
    found: dict[str, Instance] = {}
    for entry in body:
        inst = parse_entry(service, entry, allow_warning=allow_warning, seen=seen)
        if inst is None:
            continue
        if inst.id in found:  # service IDs are unique per agent only: qualify with the node
            node = entry["Node"].get("Node", "?") if isinstance(entry.get("Node"), dict) else "?"
            inst = replace(inst, id=f"{node}/{inst.id}")
        found[inst.id] = inst
    return tuple(sorted(found.values(), key=lambda i: i.id))


# --- the provider ---------------------------------------------------------------------------


class _TokenBucket:
    """Allow ``burst`` queries at once, then ``rate`` per second (Consul's advice against busy loops)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.stamp = float(burst), time.monotonic()

    async def take(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            await asyncio.sleep((1 - self.tokens) / self.rate)
            self.tokens, self.stamp = 1.0, time.monotonic()
        self.tokens -= 1


class ConsulProvider:
    """Discover instances from Consul's catalog and health APIs."""

    name = "consul"

    def __init__(  # noqa: PLR0913 - keyword-only settings, built by from_settings
        self,
        host: str = "localhost",
        port: int = 8500,
        *,
        scheme: str = "http",
        token: str | None = None,
        datacenter: str | None = None,
        allow_warning: bool = False,
        wait: float = 55.0,
        connect_timeout: float = 5.0,
        request_timeout: float = 10.0,
        read_timeout_margin: float = 5.0,
        rate: float = 5.0,
        burst: int = 10,
        max_connections: int = 128,
        tasks: Supervisor | None = None,
    ) -> None:
        if not 0 < wait <= 600:
            raise ValueError("wait must be in (0, 600] seconds (Consul caps blocking queries at 10 minutes)")
        self.base_url = f"{scheme}://{host}:{port}"
        self.token, self.datacenter, self.allow_warning = token, datacenter, allow_warning
        self.wait, self.rate, self.burst, self.max_connections = wait, rate, burst, max_connections
        self._warned_filtered = False
        self.tasks = tasks or Supervisor()
        self._short = aiohttp.ClientTimeout(sock_connect=connect_timeout, sock_read=request_timeout)
        self._long = aiohttp.ClientTimeout(
            sock_connect=connect_timeout, sock_read=read_timeout(wait, read_timeout_margin)
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, config: GatewayConfig, tasks: Supervisor | None = None
    ) -> ConsulProvider:
        """Build from ``CONSUL_*`` settings (``config`` holds per-service options, applied elsewhere)."""
        # CONSUL_ALLOW_WARNING and CONSUL_WAIT are read when the settings grow them.
        return cls(
            settings.consul_host,
            settings.consul_port,
            scheme=settings.consul_scheme,
            token=settings.consul_token,
            datacenter=settings.consul_datacenter,
            allow_warning=settings.consul_allow_warning,
            wait=settings.consul_wait,
            tasks=tasks,
        )

    async def watch(self) -> AsyncIterator[Discovered]:
        """Yield a complete snapshot now and after every change; raise ``DiscoveryError`` on failure."""
        connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=self.max_connections)
        headers = {"X-Consul-Token": self.token} if self.token else {}
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            run = _WatchRun(self, session)
            try:
                await run.load()
                run.start()  # watch from the loaded indexes while the consumer handles the first one
                last = run.snapshot()
                yield last
                while True:
                    await run.changed.wait()
                    run.changed.clear()
                    if run.failure is not None:
                        raise run.failure
                    snapshot = run.snapshot()
                    if snapshot != last:
                        last = snapshot
                        yield snapshot
            finally:
                await run.close()

    async def aclose(self) -> None:
        """Nothing to release: every ``watch()`` owns and closes its own session."""

    async def get(
        self, session: aiohttp.ClientSession, path: str, index: int, extra: Mapping[str, str] | None = None
    ) -> tuple[Any, int]:
        """GET ``path`` (blocking when ``index`` > 0); return the decoded body and ``X-Consul-Index``."""
        params = dict(extra or {})
        if self.datacenter:
            params["dc"] = self.datacenter
        if index > 0:
            params.update(index=str(index), wait=format_wait(self.wait))
        url = self.base_url + path
        try:
            async with session.get(url, params=params, timeout=self._long if index else self._short) as resp:
                if resp.status == 403:
                    raise DiscoveryError(self._forbidden(path, (await resp.text()).strip()))
                if resp.status != 200:
                    text = (await resp.text())[:200].strip()
                    raise DiscoveryError(f"Consul {self.base_url} answered {resp.status} to {path}: {text}")
                body = orjson.loads(await resp.read())
                raw_index = resp.headers.get("X-Consul-Index", "0")
                if resp.headers.get("X-Consul-Results-Filtered-By-Acls") == "true":
                    self._warn_filtered(path)
        except DiscoveryError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise DiscoveryError(f"Consul {self.base_url} unreachable ({path}): {exc!r}") from exc
        except orjson.JSONDecodeError as exc:
            raise DiscoveryError(f"Consul {self.base_url} answered invalid JSON to {path}: {exc}") from exc
        try:
            return body, int(raw_index)
        except ValueError:
            raise DiscoveryError(f"Consul answered X-Consul-Index {raw_index!r} to {path}") from None

    def _warn_filtered(self, path: str) -> None:
        if not self._warned_filtered:
            self._warned_filtered = True
            log.warning("consul: ACLs hid part of %s; CONSUL_TOKEN may lack service:read or node:read", path)

    def _forbidden(self, path: str, text: str) -> str:
        if self.token:
            return (
                f"Consul ACL token rejected (403) on {path}: {text!r}; check that CONSUL_TOKEN exists "
                "and has service:read and node:read"
            )
        return f"Consul ACL token rejected (403) on {path}: {text!r}; set CONSUL_TOKEN (ACLs are enabled)"


class _WatchRun:
    """The state and tasks of one ``watch()``: per-service instances and their blocking watchers."""

    def __init__(self, provider: ConsulProvider, session: aiohttp.ClientSession) -> None:
        self.p, self.session = provider, session
        self.services: dict[str, tuple[Instance, ...]] = {}
        self.watchers: dict[str, Supervised] = {}
        self.catalog_task: Supervised | None = None
        self.catalog_index = 0
        self.indexes: dict[str, int] = {}
        self.changed = asyncio.Event()
        self.failure: DiscoveryError | None = None
        self.seen: set[tuple[str, str, str]] = set()
        self.skipped: set[str] = set()

    def snapshot(self) -> dict[str, tuple[Instance, ...]]:
        return dict(self.services)

    async def load(self) -> None:
        """Read the catalog and every service's health once, without blocking."""
        body, index = await self.p.get(self.session, "/v1/catalog/services", 0)
        self.catalog_index = next_index(0, index)
        await self._add(self._routable(parse_service_names(body)))

    def start(self) -> None:
        # restart=False: a watcher's failure fails the whole watch, which the aggregator restarts.
        self.catalog_task = self.p.tasks.spawn(
            "consul_catalog_watch", lambda: self._guard(self._watch_catalog()), restart=False
        )
        for name in self.services:
            self._spawn(name)

    async def close(self) -> None:
        tasks = [t for t in (self.catalog_task, *self.watchers.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*(task.stop() for task in tasks))

    def _routable(self, names: frozenset[str]) -> set[str]:
        for name in names - self.skipped:
            why = validate_service_name(name)
            if why:
                self.skipped.add(name)
                log.warning("consul: skipping service %r: %s", name, why)
        return set(names) - self.skipped

    async def _fetch(self, name: str, index: int) -> tuple[tuple[Instance, ...] | None, int]:
        """Return the service's instances (None when the index did not move) and the next index."""
        path = f"/v1/health/service/{quote(name, safe='')}"
        # Without warning instances Consul filters server-side; with them, parse_entry filters.
        extra = {} if self.p.allow_warning else {"passing": "true"}
        body, new = await self.p.get(self.session, path, index, extra)
        if index and new == index:
            return None, index
        instances = parse_health(name, body, allow_warning=self.p.allow_warning, seen=self.seen)
        return instances, next_index(index, new)

    async def _add(self, names: set[str]) -> None:
        results = await asyncio.gather(*(self._fetch(n, 0) for n in names))
        for name, (instances, index) in zip(names, results, strict=True):
            self.services[name] = instances or ()
            self.indexes[name] = index
        if len(self.services) + 1 > self.p.max_connections:
            log.warning(
                "consul: %d services but max_connections=%d; some updates will wait for a free connection",
                len(self.services),
                self.p.max_connections,
            )

    def _spawn(self, name: str) -> None:
        self.watchers[name] = self.p.tasks.spawn(
            "consul_service_watch", lambda: self._guard(self._watch_service(name)), key=name, restart=False
        )

    async def _guard(self, coro: Any) -> None:
        """Run a watcher; turn its failure into ``self.failure`` and wake ``watch()``."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except DiscoveryError as exc:
            self._fail(exc)
        except Exception as exc:  # a bug must still surface as a provider failure, not a silent stop
            self._fail(DiscoveryError(f"Consul watcher failed: {exc!r}"))
            raise  # and reach the supervisor, which logs and counts the crash

    def _fail(self, exc: DiscoveryError) -> None:
        if self.failure is None:
            self.failure = exc
        self.changed.set()

    async def _watch_catalog(self) -> None:
        bucket = _TokenBucket(self.p.rate, self.p.burst)
        while True:
            await bucket.take()
            body, new = await self.p.get(self.session, "/v1/catalog/services", self.catalog_index)
            self.catalog_index = next_index(self.catalog_index, new)
            names = self._routable(parse_service_names(body))
            added, removed = names - set(self.services), set(self.services) - names
            for name in removed:
                task = self.watchers.pop(name, None)
                if task is not None:
                    task.cancel()
                del self.services[name]
                self.indexes.pop(name, None)
            if added:
                await self._add(added)
                for name in added:
                    self._spawn(name)
            if added or removed:
                self.changed.set()

    async def _watch_service(self, name: str) -> None:
        bucket = _TokenBucket(self.p.rate, self.p.burst)
        while True:
            await bucket.take()
            instances, self.indexes[name] = await self._fetch(name, self.indexes.get(name, 0))
            if instances is not None and instances != self.services.get(name):
                self.services[name] = instances
                self.changed.set()
