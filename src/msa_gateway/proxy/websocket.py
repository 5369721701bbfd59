"""WebSocket proxying: an upgrade takes the HTTP path up to the instance's 101, then the bytes are spliced.

The upgrade is routed, passes the route's request stages and gets its instance from the
balancer under the caps, as an HTTP request does (the caps slot is held for the handshake
only: a WebSocket lives long, ``websocket.max_connections`` caps those open per service). The
gateway sends the instance the upgrade request with the headers of an HTTP request
(``Attempts.upstream_headers``: hop-by-hop dropped, ``X-Forwarded-*`` its own; a
``traceparent`` naming the connection's server span as parent, ``Attempts.trace_headers``) plus
``Connection: Upgrade``, ``Upgrade: websocket`` and the client's ``Sec-WebSocket-*`` (the
handshake is end to end: key, version, subprotocols and extensions are the peers' to agree).
An instance that cannot be reached is tried again on another one; an answer other than 101
is relayed (status, headers, body). After the 101, ``ws_splice.Splice`` relays the bytes.

The client side comes from ``ws_upgrade.py`` (the gateway's uvicorn protocol); under another
server (no ``msa.upgrade`` extension) an upgrade is refused with close 1003.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from msa_gateway.errors import HTTPError, Overloaded, UpstreamError, UpstreamTimeout, render
from msa_gateway.health import outlier
from msa_gateway.observability.otlp import server_span
from msa_gateway.proxy.attempts import Attempts
from msa_gateway.proxy.exchange import Exchange, log_access
from msa_gateway.proxy.forwarder import Forwarder
from msa_gateway.proxy.headers import HOP_BY_HOP, downstream_response_headers
from msa_gateway.proxy.request import ProxyRequest, Receive, Scope, Send
from msa_gateway.proxy.ws_splice import Splice, UpstreamAnswer, UpstreamLink
from msa_gateway.ws_upgrade import EXTENSION, UpgradedConnection

if TYPE_CHECKING:
    from msa_gateway.model import Instance
    from msa_gateway.registry.snapshot import ServiceRoute
    from msa_gateway.runtime import Runtime

log = logging.getLogger("msa_gateway.proxy")

_UPGRADE = [(b"connection", b"Upgrade"), (b"upgrade", b"websocket")]


class WebSockets:
    """The open WebSocket connections of one gateway, counted per service (the cap and the gauge)."""

    __slots__ = ("_gauge", "counts")

    def __init__(self, gauge: Any) -> None:
        self._gauge = gauge
        self.counts: dict[str, int] = {}

    def admit(self, service: str, cap: int) -> bool:
        """Count a new connection to ``service`` unless it has ``cap`` already."""
        n = self.counts.get(service, 0)
        if n >= cap:
            return False
        self.counts[service] = n + 1
        self._gauge.labels(service).inc()
        return True

    def leave(self, service: str) -> None:
        """Uncount a connection admitted by ``admit``."""
        self.counts[service] -= 1
        self._gauge.labels(service).dec()


class WebSocketProxy:
    """Serve ``websocket`` scopes for ``ProxyApp``."""

    def __init__(self, runtime: Runtime, forwarder: Forwarder) -> None:
        self.rt = runtime
        self.fw = forwarder
        self.sockets: WebSockets = runtime.websockets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Proxy one WebSocket connection from upgrade to close, then write its access line."""
        conn = scope.get("extensions", {}).get(EXTENSION, {}).get("connection")
        if not isinstance(conn, UpgradedConnection):
            await send({"type": "websocket.close", "code": 1003})
            return
        req = ProxyRequest({**scope, "method": "GET"}, receive, send)
        tracer = self.rt.tracer
        if tracer is not None:  # as an HTTP request: the trace continues upstream and in the access line
            req.trace = tracer.start(req.traceparent, req.tracestate)
        ex = Exchange()
        splice: Splice | None = None
        try:
            route = req.match(self.rt.snapshot)
            if self.rt.draining:
                raise Overloaded("the gateway is shutting down", route.guard.options.limits.retry_after)
            for stage in route.request_stages:
                reply = await stage(req)
                if reply is not None:
                    self._respond(conn, ex, reply.status, [*reply.headers, self._rid(req)], reply.body)
                    return
            ws = route.options.websocket
            if not self.sockets.admit(route.name, ws.max_connections):
                self.fw.metrics.overflow.labels(route.name).inc()
                raise Overloaded(
                    f"too many WebSocket connections to {route.name!r}",
                    route.guard.options.limits.retry_after,
                )
            try:
                link, answer = await self._connect(route, req, ex)
                if answer.status != 101:
                    out = downstream_response_headers(answer.headers, req.request_id.encode("ascii"))
                    self._respond(conn, ex, answer.status, out, answer.body)
                    assert link.transport is not None
                    link.transport.close()
                    return
                splice = self._splice(conn, link, answer, req, ws.idle_timeout)
                ex.status = 101
                await asyncio.shield(splice.done)
            finally:
                self.sockets.leave(route.name)
        except HTTPError as exc:
            ex.error = exc.kind if isinstance(exc, UpstreamError) else exc.error
            status, headers, body = render(exc, req.request_id)
            self._respond(conn, ex, status, headers, body)
        finally:
            if splice is not None:
                ex.nbytes, ex.error = splice.bytes_out, splice.ended
            log_access(self.rt.access, req, ex, splice.bytes_in if splice is not None else 0)
            exporter = self.rt.exporter
            if req.trace is not None and req.trace.sampled and exporter is not None:
                exporter.submit(server_span(req, ex))  # the whole connection, upgrade to close

    @staticmethod
    def _rid(req: ProxyRequest) -> tuple[bytes, bytes]:
        return (b"x-request-id", req.request_id.encode("ascii"))

    @staticmethod
    def _respond(
        conn: UpgradedConnection, ex: Exchange, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        ex.status, ex.nbytes = status, len(body)
        conn.respond(status, headers, body)

    def _splice(
        self,
        conn: UpgradedConnection,
        link: UpstreamLink,
        answer: UpstreamAnswer,
        req: ProxyRequest,
        idle: float,
    ) -> Splice:
        """Write the 101 to the client and start relaying."""
        assert link.transport is not None
        splice = Splice(conn.transport, link.transport, idle)
        link.splice = splice
        headers = [(k, v) for k, v in answer.headers if k not in HOP_BY_HOP and k != b"x-request-id"]
        conn.accept([*_UPGRADE, *headers, self._rid(req)], splice)
        if answer.body:  # frames the instance sent right after its 101
            splice.from_upstream(answer.body)
        return splice

    async def _connect(
        self, route: ServiceRoute, req: ProxyRequest, ex: Exchange
    ) -> tuple[UpstreamLink, UpstreamAnswer]:
        """Send the upgrade to an instance, trying another one when one cannot be reached."""
        attempts = Attempts(self.fw, route, req, ex, None)
        options = route.options
        for n in range(options.retry.max_retries + 1):
            lease = attempts.admit()
            try:
                headers = attempts.upstream_headers(lease.instance)
                # The instance's span is a child of the connection's server span (no client span here).
                attempts.trace_headers(headers, req.trace.span_id if req.trace is not None else None)
                link, answer = await self._handshake(lease.instance, headers, req, route)
            except (OSError, TimeoutError) as exc:
                self.fw.report(route, lease, outlier.Outcome.GATEWAY_FAILURE)
                sent = not isinstance(exc, ConnectionRefusedError)
                kind = (
                    "read_timeout"
                    if isinstance(exc, TimeoutError)
                    else "connect_error"
                    if not sent
                    else "protocol_error"
                )
                route.upstream_errors.labels(route.name, kind).inc()
                if n == options.retry.max_retries or sent:
                    error = UpstreamTimeout if kind == "read_timeout" else UpstreamError
                    raise error(f"the instance's WebSocket handshake failed ({kind}): {exc}", kind) from None
                continue
            finally:
                lease.release()
            self.fw.report(route, lease, outlier.outcome_for_status(answer.status))
            return link, answer
        raise AssertionError("unreachable: the last attempt raises")

    @staticmethod
    async def _handshake(
        instance: Instance, headers: list[tuple[bytes, bytes]], req: ProxyRequest, route: ServiceRoute
    ) -> tuple[UpstreamLink, UpstreamAnswer]:
        """Connect, send the upgrade request and read the answer's head (and a refusal's body)."""
        timeouts = route.options.timeouts
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeouts.connect):
            _, link = await loop.create_connection(UpstreamLink, instance.host, instance.port)
        assert link.transport is not None
        head = [b"GET %s HTTP/1.1" % req.target.encode("latin-1")]
        head.extend(b"%s: %s" % (k, v) for k, v in (*headers, *_UPGRADE))  # Sec-WebSocket-* are among them
        link.transport.write(b"\r\n".join(head) + b"\r\n\r\n")
        try:
            async with asyncio.timeout(timeouts.read):
                answer = await link.answer
        except BaseException:
            link.transport.abort()
            raise
        return link, answer
