"""A Consul HTTP API double: a real HTTP server on 127.0.0.1, run in its own thread and event loop.

It follows HashiCorp's documented HTTP API (developer.hashicorp.com/consul/api-docs, sources in
hashicorp/consul ``website/content/api-docs/``):

- "HTTP API Structure" (api-structure): the ``/v1`` prefix; the token in ``X-Consul-Token`` or
  ``Authorization: Bearer``; ``X-Consul-Default-Acl-Policy`` on every answer;
  ``X-Consul-Results-Filtered-By-ACLs: true`` when a valid token's view was filtered.
- "Catalog HTTP API", List Services: ``GET /v1/catalog/services`` answers ``{name: [tags]}`` and
  always lists the ``consul`` service itself.
- "Health HTTP API", List Service Instances for Service: ``GET /v1/health/service/:service`` with
  ``?passing`` (only entries whose checks, node checks included, are all passing) and ``?dc``;
  entries are ``{"Node": {...}, "Service": {...}, "Checks": [...]}`` with ``Service.Address`` empty
  when the node's address applies and ``Service.Weights`` ``{"Passing", "Warning"}``.
- "Blocking Queries" (features/blocking): ``X-Consul-Index`` on answers; ``?index`` > 0 blocks until
  the query's index passes it or ``?wait`` (default 5m, at most 10m, Go duration syntax) plus a random
  jitter of up to ``wait/16`` elapses; a snapshot restore wakes every blocked query and may move an
  index backwards.
- "Agent Service HTTP API": ``PUT /v1/agent/service/register`` (``Check``/``Checks`` with ``HTTP`` +
  ``Interval`` or ``TTL``; default check ID ``service:<id>``, or ``service:<id>:<n>`` for several; new
  checks start ``critical`` unless ``Status`` is given) and ``PUT /v1/agent/service/deregister/:id``
  (unknown IDs are a no-op).
- "Agent Check HTTP API": ``PUT /v1/agent/check/{pass,warn,fail}/:check_id?note=`` and
  ``PUT /v1/agent/check/update/:check_id`` with ``{"Status", "Output"}``; HTTP checks are run every
  ``Interval`` (2xx passing, 429 warning, anything else critical); TTL checks go critical when not
  updated within ``TTL``.
- ACL errors (``acl/errors.go``): an unknown token is ``403 ACL not found``; a write the token may not
  do is ``403 Permission denied: ...``; reads are filtered rather than refused.

Not modelled: namespaces, partitions, ``filter``, ``near``, ``tag``, consistency modes, agent caching,
streaming, connect, ``DeregisterCriticalServiceAfter`` (accepted and echoed, never reaps).

Test controls (thread-safe, callable from any thread or event loop): ``register``/``deregister``
(raw catalog writes, which may hold data Consul's agent would refuse), ``set_check``,
``set_node_health``, ``add_node``, ``restore_snapshot`` (indexes go backwards),
``report_zero_index``, ``go_down``/``come_back`` (refuse connections, reset open ones), ``stall``
(accept but never answer), and ``requests`` (every request seen).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from tests.support.consul_catalog import (
    CRITICAL,
    DEFAULT_WAIT,
    MAX_WAIT,
    PASSING,
    STATUSES,
    WARNING,
    AclPolicy,
    Check,
    Datacenter,
    RecordedRequest,
    Service,
    check_json,
    check_key,
    node_json,
    parse_go_duration,
    service_json,
)
from tests.support.procs import free_port

__all__ = ["AclPolicy", "ConsulDouble", "RecordedRequest", "parse_go_duration"]


def _field(body: Mapping[str, Any], camel: str, snake: str, default: Any = None) -> Any:
    """Read a register-body key in CamelCase or snake_case, as the agent accepts both."""
    if camel in body:
        return body[camel]
    return body.get(snake, default)


class ConsulDouble:
    """A Consul agent + server on 127.0.0.1, for tests; see the module docstring for what it follows."""

    def __init__(
        self,
        *,
        datacenter: str = "dc1",
        other_datacenters: Sequence[str] = (),
        node: str = "node1",
        node_address: str = "127.0.0.1",
        acl_tokens: Mapping[str, AclPolicy] | None = None,
        anonymous: AclPolicy | None = None,
        port: int | None = None,
    ) -> None:
        self.datacenter = datacenter
        self.node = node
        self.port = port or free_port()
        self._node_address = node_address
        self._dc_names = (datacenter, *other_datacenters)
        self._acl_tokens = dict(acl_tokens) if acl_tokens is not None else None
        self._anonymous = anonymous or AclPolicy(service_read=False, service_write=False)
        self._dcs: dict[str, Datacenter] = {}
        self._log: list[RecordedRequest] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="consul-double", daemon=True)
        self._runner: web.AppRunner | None = None
        self._down = asyncio.Event()
        self._stalled = False
        self._check_tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._ttl_deadlines: dict[tuple[str, str], float] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    # --- lifecycle ---

    @property
    def url(self) -> str:
        """Return the base URL, e.g. ``http://127.0.0.1:8500``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ConsulDouble:
        """Start the thread, the catalogs and the listener."""
        self._thread.start()
        self._call(self._init_async)
        return self

    def close(self) -> None:
        """Stop listening, stop the checks and the thread."""
        if not self._thread.is_alive():
            return
        self._call(self._close_async)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> ConsulDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (sync or async) on the double's loop and return its result."""

        async def run() -> Any:
            result = fn()
            if asyncio.iscoroutine(result):
                result = await result
            return result

        fut: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(run(), self._loop)
        return fut.result(15)

    async def _init_async(self) -> None:
        for name in self._dc_names:
            self._dcs[name] = Datacenter(name, self.node, self._node_address)
        self._http = aiohttp.ClientSession()
        self._reaper = asyncio.create_task(self._reap_ttl(), name="consul-double-ttl-reaper")
        await self._listen()

    async def _listen(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/v1/catalog/services", self._catalog_services)
        app.router.add_route("*", "/v1/health/service/{service}", self._health_service)
        app.router.add_route("*", "/v1/agent/service/register", self._agent_register)
        app.router.add_route("*", "/v1/agent/service/deregister/{service_id}", self._agent_deregister)
        app.router.add_route("*", "/v1/agent/check/{verb:pass|warn|fail}/{check_id}", self._agent_ttl)
        app.router.add_route("*", "/v1/agent/check/update/{check_id}", self._agent_ttl_update)
        app.middlewares.append(self._middleware)
        self._down = asyncio.Event()
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def _stop_listening(self) -> None:
        self._down.set()
        for dc in self._dcs.values():
            dc.wake()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _close_async(self) -> None:
        await self._stop_listening()
        tasks = [*self._check_tasks.values(), *([self._reaper] if self._reaper else [])]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    # --- test controls ---

    def go_down(self) -> None:
        """Reset every open connection and refuse new ones, like a killed agent."""
        self._call(self._stop_listening)

    def come_back(self) -> None:
        """Listen again on the same port with the same data."""
        self._call(self._listen)

    def stall(self, on: bool = True) -> None:
        """Accept connections but never answer while ``on``."""
        self._stalled = on

    def add_node(self, name: str, address: str, dc: str | None = None) -> None:
        """Add (or re-address) a node, with a passing ``serfHealth`` check."""
        self._call(lambda: self._dc(dc).add_node(name, address))

    def register(
        self,
        service: str,
        service_id: str,
        *,
        port: Any,
        address: str = "",
        tags: Sequence[str] = (),
        meta: Mapping[str, Any] | None = None,
        weights: Mapping[str, Any] | None = None,
        node: str | None = None,
        status: str = PASSING,
        dc: str | None = None,
    ) -> str:
        """Write a service instance and its check ``service:<id>`` into the catalog; return the check ID."""
        node_name = node or self.node
        svc = Service(
            node_name,
            service_id,
            service,
            port,
            address,
            tuple(tags),
            dict(meta or {}),
            dict(weights or {"Passing": 1, "Warning": 1}),
            0,
            0,
        )
        check = Check(
            node_name,
            f"service:{service_id}",
            f"Service '{service}' check",
            status,
            0,
            0,
            service_id=service_id,
            service_name=service,
            service_tags=tuple(tags),
        )
        self._call(lambda: self._dc(dc).put_service(svc, [check], replace_checks=True))
        return check.id

    def deregister(self, service_id: str, node: str | None = None, dc: str | None = None) -> bool:
        """Remove a service instance and its checks; return False when it was not there."""
        return bool(self._call(lambda: self._dc(dc).drop_service(node or self.node, service_id)))

    def set_check(
        self, check_id: str, status: str, output: str = "", node: str | None = None, dc: str | None = None
    ) -> None:
        """Set a check's status (``passing``, ``warning``, ``critical``)."""
        assert status in STATUSES, status
        ok = self._call(lambda: self._dc(dc).set_check(node or self.node, check_id, status, output))
        if not ok:
            raise KeyError(check_id)

    def set_node_health(self, node: str, status: str, dc: str | None = None) -> None:
        """Set a node's ``serfHealth`` check, which counts for every service on it."""
        self.set_check("serfHealth", status, node=node, dc=dc)

    def restore_snapshot(self, index: int, dc: str | None = None) -> None:
        """Move the raft index back to ``index`` and wake blocked queries, like a snapshot restore."""
        self._call(lambda: self._dc(dc).restore_snapshot(index))

    def report_zero_index(self, on: bool = True, dc: str | None = None) -> None:
        """Answer ``X-Consul-Index: 0`` (the bug the blocking-query docs warn about)."""

        def flip() -> None:
            self._dc(dc).zero_index = on

        self._call(flip)

    def index(self, dc: str | None = None) -> int:
        """Return the current raft index."""
        return int(self._call(lambda: self._dc(dc).index))

    def check_status(self, check_id: str, node: str | None = None, dc: str | None = None) -> str | None:
        """Return a check's status, or None when it does not exist."""
        c = self._call(lambda: self._dc(dc).checks.get(check_key(node or self.node, check_id)))
        return None if c is None else str(c.status)

    def check(self, check_id: str, node: str | None = None, dc: str | None = None) -> dict[str, Any] | None:
        """Return a check as the health API shows it, or None."""
        c = self._call(lambda: self._dc(dc).checks.get(check_key(node or self.node, check_id)))
        return None if c is None else check_json(c)

    def instances(self, service: str, dc: str | None = None) -> list[dict[str, Any]]:
        """Return the raw health entries of ``service`` (what ``/v1/health/service`` would answer)."""
        return list(self._call(lambda: self._health_body(self._dc(dc), service, passing=False)))

    @property
    def requests(self) -> list[RecordedRequest]:
        """Return every request received so far."""
        return list(self._log)

    def _dc(self, dc: str | None) -> Datacenter:
        return self._dcs[dc or self.datacenter]

    # --- HTTP plumbing ---

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        self._log.append(
            RecordedRequest(
                request.method, request.path, dict(request.query), self._token(request), time.time()
            )
        )
        if self._stalled:
            await self._down.wait()
        if self._down.is_set():
            self._abort(request)
        try:
            resp: web.StreamResponse = await handler(request)
        except _Reply as reply:
            resp = reply.response
        resp.headers["X-Consul-Default-Acl-Policy"] = "deny" if self._acl_tokens is not None else "allow"
        return resp

    @staticmethod
    def _abort(request: web.Request) -> None:
        if request.transport is not None:
            request.transport.abort()
        raise web.HTTPServiceUnavailable()  # never sent: the connection is already reset

    @staticmethod
    def _token(request: web.Request) -> str | None:
        token = request.headers.get("X-Consul-Token")
        if not token:
            auth = request.headers.get("Authorization", "")
            if auth.lower().startswith("bearer "):
                token = auth[7:].strip()
        return token or request.query.get("token") or None

    def _policy(self, request: web.Request) -> tuple[AclPolicy, bool]:
        """Return the request's policy and whether a valid non-anonymous token was used; raise 403."""
        if self._acl_tokens is None:
            return AclPolicy(), False
        token = self._token(request)
        if token is None or token == "anonymous":
            return self._anonymous, False
        policy = self._acl_tokens.get(token)
        if policy is None:
            raise _text(403, "ACL not found")
        return policy, True

    @staticmethod
    def _method(request: web.Request, allowed: str) -> None:
        if request.method != allowed:
            raise _text(405, f"method {request.method} not allowed")

    def _query_dc(self, request: web.Request) -> Datacenter:
        name = request.query.get("dc") or self.datacenter
        dc = self._dcs.get(name)
        if dc is None:
            raise _text(500, "No path to datacenter")
        return dc

    async def _blocking(
        self, request: web.Request, dc: Datacenter, current: Callable[[], int]
    ) -> tuple[int, bool]:
        """Wait as a blocking query does; return the index to answer with and whether down."""
        try:
            min_index = int(request.query.get("index", "0") or "0")
        except ValueError:
            raise _text(400, "Invalid index") from None
        try:
            wait = parse_go_duration(request.query["wait"]) if "wait" in request.query else DEFAULT_WAIT
        except ValueError:
            raise _text(400, "Invalid wait time") from None
        wait = min(wait, MAX_WAIT) if wait > 0 else DEFAULT_WAIT
        if min_index <= 0:
            return current(), False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait + random.uniform(0, wait / 16)
        generation = dc.generation
        while current() <= min_index and dc.generation == generation and not self._down.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(dc.changed.wait(), remaining)
            except TimeoutError:
                break
        if self._down.is_set():
            self._abort(request)
        return current(), False

    @staticmethod
    def _json(body: Any, index: int, filtered: bool = False) -> web.Response:
        headers = {
            "X-Consul-Index": str(index),
            "X-Consul-Knownleader": "true",
            "X-Consul-Lastcontact": "0",
            "X-Consul-Effective-Consistency": "leader",
        }
        if filtered:
            headers["X-Consul-Results-Filtered-By-Acls"] = "true"
        return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)

    # --- catalog and health ---

    async def _catalog_services(self, request: web.Request) -> web.StreamResponse:
        self._method(request, "GET")
        policy, authed = self._policy(request)
        dc = self._query_dc(request)
        index, _ = await self._blocking(request, dc, dc.catalog_index)
        body: dict[str, list[str]] = {}
        for svc in dc.services.values():
            tags = body.setdefault(svc.name, [])
            tags.extend(t for t in svc.tags if t not in tags)
        filtered = not policy.service_read and bool(body)
        if not policy.service_read:
            body = {}
        return self._json(dict(sorted(body.items())), index, filtered and authed)

    def _health_body(self, dc: Datacenter, service: str, passing: bool) -> list[dict[str, Any]]:
        out = []
        for svc, node, checks in dc.entries(service):
            if passing and any(c.status != PASSING for c in checks):
                continue
            out.append(
                {
                    "Node": node_json(node, dc.name) if node else {},
                    "Service": service_json(svc),
                    "Checks": [check_json(c) for c in checks],
                }
            )
        return out

    async def _health_service(self, request: web.Request) -> web.StreamResponse:
        self._method(request, "GET")
        policy, authed = self._policy(request)
        dc = self._query_dc(request)
        service = request.match_info["service"]
        index, _ = await self._blocking(request, dc, lambda: dc.health_index(service))
        passing = "passing" in request.query and request.query["passing"].lower() not in {"false", "0"}
        body = self._health_body(dc, service, passing)
        if not policy.service_read:
            return self._json([], index, authed and bool(body))
        return self._json(body, index)

    # --- agent ---

    def _require_write(self, request: web.Request, service: str) -> None:
        policy, _ = self._policy(request)
        if not policy.service_write:
            raise _text(
                403,
                "Permission denied: token with AccessorID '00000000-0000-0000-0000-000000000002' "
                f"lacks permission 'service:write' on \"{service}\"",
            )

    async def _agent_register(self, request: web.Request) -> web.StreamResponse:
        self._method(request, "PUT")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise _text(400, f"Request decode failed: {exc}") from None
        if not isinstance(body, dict):
            raise _text(400, "Request decode failed: expected an object")
        name = _field(body, "Name", "name", "")
        if not name:
            raise _text(400, "Missing service name")
        self._require_write(request, name)
        sid = _field(body, "ID", "id", "") or name
        port = _field(body, "Port", "port", 0)
        if not isinstance(port, int) or port < 0 or port > 65535:
            raise _text(400, f"Invalid Service Meta: invalid port {port!r}")
        tags = tuple(_field(body, "Tags", "tags", None) or ())
        svc = Service(
            self.node,
            sid,
            name,
            port,
            _field(body, "Address", "address", "") or "",
            tags,
            dict(_field(body, "Meta", "meta", None) or {}),
            dict(_field(body, "Weights", "weights", None) or {"Passing": 1, "Warning": 1}),
            0,
            0,
            bool(_field(body, "EnableTagOverride", "enable_tag_override", False)),
        )
        raw_checks = list(_field(body, "Checks", "checks", None) or [])
        single = _field(body, "Check", "check", None)
        if single:
            raw_checks.insert(0, single)
        checks = [self._parse_check(c, svc, i, len(raw_checks)) for i, c in enumerate(raw_checks)]
        replace_checks = "replace-existing-checks" in request.query
        self._dc(None).put_service(svc, checks, replace_checks=replace_checks)
        for c in checks:
            self._start_check(c)
        return web.Response(status=200)

    def _parse_check(self, raw: Mapping[str, Any], svc: Service, i: int, n: int) -> Check:
        if not isinstance(raw, Mapping):
            raise _text(400, "Invalid check: expected an object")
        check_id = _field(raw, "CheckID", "check_id", "") or _field(raw, "ID", "id", "")
        if not check_id:
            check_id = f"service:{svc.id}" + (f":{i + 1}" if n > 1 else "")
        name = _field(raw, "Name", "name", "") or f"Service '{svc.name}' check"
        http, ttl_text = _field(raw, "HTTP", "http", ""), _field(raw, "TTL", "ttl", "")
        try:
            interval = parse_go_duration(_field(raw, "Interval", "interval", "") or "0")
            timeout = parse_go_duration(_field(raw, "Timeout", "timeout", "") or "10s")
            ttl = parse_go_duration(ttl_text or "0")
        except ValueError as exc:
            raise _text(400, f"Invalid check: {exc}") from None
        if http and interval <= 0:
            raise _text(400, "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, or TCP checks")
        if not http and ttl <= 0:
            raise _text(400, "Invalid check: TTL must be > 0 for TTL checks (only HTTP and TTL are modelled)")
        status = _field(raw, "Status", "status", "") or CRITICAL
        if status not in STATUSES:
            raise _text(400, f"Invalid check: status {status!r}")
        definition = {
            "Interval": _field(raw, "Interval", "interval", "") or "0s",
            "Timeout": _field(raw, "Timeout", "timeout", "") or "0s",
            "DeregisterCriticalServiceAfter": _field(
                raw, "DeregisterCriticalServiceAfter", "deregister_critical_service_after", ""
            )
            or "0s",
            "HTTP": http,
        }
        return Check(
            self.node,
            check_id,
            name,
            status,
            0,
            0,
            service_id=svc.id,
            service_name=svc.name,
            service_tags=svc.tags,
            notes=_field(raw, "Notes", "notes", "") or "",
            type="http" if http else "ttl",
            http=http,
            method=_field(raw, "Method", "method", "") or "GET",
            interval=interval,
            timeout=timeout,
            ttl=ttl,
            definition=definition,
        )

    def _start_check(self, c: Check) -> None:
        key = check_key(c.node, c.id)
        old = self._check_tasks.pop(key, None)
        if old is not None:
            old.cancel()
        self._ttl_deadlines.pop(key, None)
        if c.type == "http":
            self._check_tasks[key] = asyncio.create_task(
                self._run_http_check(c), name=f"consul-double-check:{c.id}"
            )
        elif c.type == "ttl":
            self._ttl_deadlines[key] = asyncio.get_running_loop().time() + c.ttl

    async def _run_http_check(self, c: Check) -> None:
        assert self._http is not None
        dc = self._dc(None)
        while (c.node, c.id) in dc.checks:
            try:
                async with self._http.request(
                    c.method, c.http, timeout=aiohttp.ClientTimeout(total=c.timeout)
                ) as resp:
                    text = (await resp.text(errors="replace"))[:4096]
                    code = resp.status
                status = PASSING if 200 <= code < 300 else WARNING if code == 429 else CRITICAL
                output = f"HTTP {c.method} {c.http}: {code} Output: {text}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                status, output = CRITICAL, f"{c.method} {c.http}: {exc!r}"
            dc.set_check(c.node, c.id, status, output)
            await asyncio.sleep(c.interval)

    async def _reap_ttl(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.05)
            now = loop.time()
            for key, deadline in list(self._ttl_deadlines.items()):
                if deadline <= now:
                    del self._ttl_deadlines[key]
                    self._dc(None).set_check(key[0], key[1], CRITICAL, "TTL expired")

    async def _agent_deregister(self, request: web.Request) -> web.StreamResponse:
        self._method(request, "PUT")
        sid = request.match_info["service_id"]
        dc = self._dc(None)
        svc = dc.services.get((self.node, sid))
        self._require_write(request, svc.name if svc else sid)
        for key in [k for k, c in dc.checks.items() if c.node == self.node and c.service_id == sid]:
            task = self._check_tasks.pop(key, None)
            if task is not None:
                task.cancel()
            self._ttl_deadlines.pop(key, None)
        dc.drop_service(self.node, sid)
        return web.Response(status=200)

    def _ttl_set(self, request: web.Request, check_id: str, status: str, output: str) -> web.Response:
        dc = self._dc(None)
        c = dc.checks.get(check_key(self.node, check_id))
        if c is None:
            raise _text(404, f'Unknown check ID "{check_id}"')
        self._require_write(request, c.service_name or check_id)
        if c.type != "ttl":
            raise _text(500, f'CheckID "{check_id}" does not have associated TTL')
        self._ttl_deadlines[check_key(self.node, check_id)] = asyncio.get_running_loop().time() + c.ttl
        dc.set_check(self.node, check_id, status, output)
        return web.Response(status=200)

    async def _agent_ttl(self, request: web.Request) -> web.StreamResponse:
        self._method(request, "PUT")
        status = {"pass": PASSING, "warn": WARNING, "fail": CRITICAL}[request.match_info["verb"]]
        return self._ttl_set(request, request.match_info["check_id"], status, request.query.get("note", ""))

    async def _agent_ttl_update(self, request: web.Request) -> web.StreamResponse:
        self._method(request, "PUT")
        try:
            body = orjson.loads(await request.read() or b"{}")
        except orjson.JSONDecodeError as exc:
            raise _text(400, f"Request decode failed: {exc}") from None
        status = body.get("Status", "")
        if status not in STATUSES:
            raise _text(400, f"Invalid check status: {status!r}")
        return self._ttl_set(request, request.match_info["check_id"], status, str(body.get("Output", "")))


class _Reply(Exception):
    """An error answer, raised from deep in a handler and sent by the middleware."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.text)
        self.response = response


def _text(status: int, message: str) -> _Reply:
    """Return the plain-text error Consul answers with."""
    return _Reply(web.Response(status=status, text=message, content_type="text/plain"))


def consul_double(**kwargs: Any) -> Iterator[ConsulDouble]:
    """Yield a started double and close it afterwards (for use as a pytest fixture body)."""
    double = ConsulDouble(**kwargs).start()
    try:
        yield double
    finally:
        double.close()
