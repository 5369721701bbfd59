"""The proxy as a raw ASGI app: a short chain of steps, each in its own module.

    match the route (raw path)      proxy/request.py    ProxyRequest.match
    request stages (per route)      policies/           compiled when the snapshot is built
    open the body                   proxy/exchange.py   read whole when small, else streamed
    forward                         proxy/attempts.py   pick, caps, attempts, retries, outcome
    response stages + stream back   proxy/exchange.py   chunk by chunk, never a whole body
    account                         here                metrics and one access line

The snapshot is read once per request, so a swap never changes a request half way. Errors
become JSON only through ``errors.render``.
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import TYPE_CHECKING

from msa_gateway.errors import HTTPError, UpstreamError, render
from msa_gateway.observability.otlp import server_span
from msa_gateway.observability.requests import method_label
from msa_gateway.proxy.exchange import (
    STATUS_CLIENT_GONE,
    BodyStream,
    ClientGone,
    Exchange,
    client_error,
    log_access,
    open_body,
    ready_body,
    stream_back,
)
from msa_gateway.proxy.forwarder import Forwarder
from msa_gateway.proxy.lease import Lease
from msa_gateway.proxy.redirects import Redirects
from msa_gateway.proxy.request import ProxyRequest, Receive, Scope, Send
from msa_gateway.proxy.websocket import WebSocketProxy
from msa_gateway.uvicorn_cycle import abort, write_whole

if TYPE_CHECKING:
    from msa_gateway.policies.base import Reply, ResponseStage
    from msa_gateway.registry.snapshot import ServiceRoute
    from msa_gateway.runtime import Runtime

log = logging.getLogger("msa_gateway.proxy")


def response_stages(route: ServiceRoute, lease: Lease | None) -> tuple[ResponseStage, ...]:
    """Return the route's response stages, plus the balancer's for this answer (the sticky cookie)."""
    extra = route.sticky_stage
    if extra is None or lease is None:
        return route.response_stages
    return (*route.response_stages, extra(lease.instance, route.name))


class ProxyApp:
    """Forward ``/{service}/{path}`` to a healthy instance of ``service``."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        settings = runtime.settings
        self.forwarder = Forwarder(
            runtime.upstream,
            runtime.metrics,
            allow_underscores=settings.allow_underscores_in_headers,
            tracing=(runtime.tracer, runtime.exporter),
        )
        self.websocket = WebSocketProxy(runtime, self.forwarder)
        self.tracer = runtime.tracer
        self.exporter = runtime.exporter
        self.body_timeout = settings.body_timeout
        self.rewrite_redirects = settings.rewrite_redirects
        self.writes = runtime.writes
        # the runtime's for its lifetime, read per request: kept here, one native read each
        self.stats = runtime.metrics.requests
        self.access = runtime.access

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """Serve one HTTP request, or one WebSocket connection (proxy/websocket.py)."""
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        req = ProxyRequest(scope, receive, send)
        if self.tracer is not None:
            req.trace = self.tracer.start(req.traceparent, req.tracestate)
        ex = Exchange()
        stats = self.stats
        stats.in_flight += 1
        try:  # the steps inline, not in a nested coroutine: each level costs every resumption
            route = req.match(self.rt.snapshot)
            for stage in route.request_stages:
                reply = await stage(req)
                if reply is not None:
                    await self._reply(req, ex, reply)
                    return
            # A small body mostly came with the head: taken whole here, without a coroutine.
            body: bytes | BodyStream | None = ready_body(req, ex, route.options)
            if body is None and req.has_body:
                body = await open_body(req, ex, route.options, self.body_timeout)
            outcome = await self.forwarder.forward(route, req, ex, body)
            try:
                if outcome.response is None:
                    assert outcome.error is not None
                    raise outcome.error
                lease = outcome.lease
                redirects = None
                if self.rewrite_redirects and lease is not None:
                    redirects = Redirects(lease.instance, req, route.prefix)
                stages = response_stages(route, lease)
                await stream_back(req, ex, outcome.response, stages, redirects, self.writes)
            finally:
                outcome.finish()
        except ClientGone:
            await self._client_gone(req, ex)
        except HTTPError as exc:
            await self._fail(req, ex, exc)
        except Exception:  # a bug: logged with its trace, answered in the one error shape
            await self._crash(req, ex)
        finally:
            stats.in_flight -= 1
            self._account(req, ex)

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Proxy a WebSocket connection; lifespan and any other scope are ``GatewayApp``'s business."""
        if scope["type"] == "websocket":
            await self.websocket(scope, receive, send)

    async def _crash(self, req: ProxyRequest, ex: Exchange) -> None:
        """Answer 500 (never a stack trace), or close the connection when the answer had begun."""
        log.exception("proxy_request_failed", extra={"request_id": req.request_id})
        if ex.started_response and not ex.client_gone:
            abort(req.send)
        await self._fail(req, ex, HTTPError("unexpected error"))  # internal_error

    async def _client_gone(self, req: ProxyRequest, ex: Exchange) -> None:
        """The client's body stalled, grew too large, or the client went away."""
        limit = req.route.options.max_body_size if req.route is not None else None
        exc = None if ex.client_gone else client_error(ex, limit)
        if exc is None:
            ex.status, ex.error = STATUS_CLIENT_GONE, "client_gone"
            return
        ex.error = exc.error
        await self._send_error(req, ex, exc)

    async def _fail(self, req: ProxyRequest, ex: Exchange, exc: HTTPError) -> None:
        route = req.route
        if isinstance(exc, UpstreamError) and route is not None:
            route.upstream_errors.labels(route.name, exc.kind).inc()
            ex.error = exc.kind
        else:
            ex.error = exc.error
        if ex.client_gone:
            ex.status = STATUS_CLIENT_GONE
        elif not ex.started_response:
            await self._send_error(req, ex, exc)

    async def _send_error(self, req: ProxyRequest, ex: Exchange, exc: HTTPError) -> None:
        status, headers, body = render(exc, req.request_id)
        if req.route is not None:  # CORS and header transforms also on the gateway's own answers
            for stage in req.route.response_stages:
                headers = stage(req, status, headers)
        await self._answer(req, status, headers, body)
        ex.status, ex.nbytes = status, len(body)

    async def _reply(self, req: ProxyRequest, ex: Exchange, reply: Reply) -> None:
        headers: list[tuple[bytes, bytes]] = [*reply.headers, (b"x-request-id", req.request_id.encode())]
        if reply.status != 204:  # RFC 9110 8.6: no Content-Length on a 204
            headers.append((b"content-length", b"%d" % len(reply.body)))
        await self._answer(req, reply.status, headers, reply.body)
        ex.status, ex.nbytes = reply.status, len(reply.body)
        ex.started_response = True

    async def _answer(
        self, req: ProxyRequest, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        """Send the gateway's own answer (a refusal under a flood, say) as one write, as a proxied one."""
        if not write_whole(req.send, status, headers, body, self.writes):
            await req.send({"type": "http.response.start", "status": status, "headers": headers})
            await req.send({"type": "http.response.body", "body": body})

    def _account(self, req: ProxyRequest, ex: Exchange) -> None:
        route = req.route
        mlabel = method_label(req.method)
        if route is not None:
            self.stats.count(route.name, mlabel, ex.status)
            route.duration.observe(perf_counter() - req.started, req.trace)
        else:
            self.rt.count_unknown(mlabel, ex.status)
        log_access(self.access, req, ex)
        if self.exporter is not None and req.trace is not None and req.trace.sampled:
            self.exporter.submit(server_span(req, ex))
