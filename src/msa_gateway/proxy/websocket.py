"""WebSocket proxying: an upgrade takes the HTTP path up to the instance's 101, then messages are relayed.

uvicorn speaks WebSocket with the client (``websocket`` ASGI scope: frames are checked and
unmasked, pings answered, fragments joined into messages); ``ws_upstream.py`` speaks it with
the instance. The upgrade is routed, passes the route's request stages and gets its instance
from the balancer under the caps, as an HTTP request does; the caps slot is held for the
handshake only (a WebSocket lives long: ``websocket.max_connections`` caps those per service).
A connection failure is tried on another instance; an instance refusing the upgrade has its
status and body relayed. Then each message is forwarded as soon as it is whole, one at a time
in each direction (the next is read only when the last one is sent: no queue grows). A close
is passed on with its code; an instance that vanishes closes the client with 1014 (bad
gateway); a client that vanishes closes the instance with 1001. After ``idle_timeout`` without
a message both sides get 1000 "idle timeout"; at drain (SIGTERM) 1001.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from msa_gateway.errors import HTTPError, NoHealthyInstance, Overloaded, UpstreamError, render
from msa_gateway.health import outlier
from msa_gateway.proxy.attempts import Attempts, Forwarder
from msa_gateway.proxy.exchange import Exchange, log_access
from msa_gateway.proxy.headers import downstream_response_headers
from msa_gateway.proxy.request import ProxyRequest, Receive, Scope, Send
from msa_gateway.proxy.ws_upstream import open_upstream

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

    from msa_gateway.registry.snapshot import ServiceRoute
    from msa_gateway.runtime import Runtime

log = logging.getLogger("msa_gateway.proxy")

BAD_GATEWAY = 1014  # the instance went away without a close frame
_NO_CODE = frozenset({1005, 1006, 1015})  # codes a peer reports but never sends


class Relay:
    """One open proxied connection: what closes it and what it carried."""

    __slots__ = ("bytes_in", "bytes_out", "closing", "idle", "last", "upstream")

    def __init__(self, upstream: ClientConnection, idle: float) -> None:
        self.upstream = upstream
        self.idle = idle
        self.last = time.monotonic()
        self.bytes_in = 0  # from the client
        self.bytes_out = 0  # to the client
        self.closing: tuple[int, str] | None = None  # set when the gateway ends it (idle, drain)

    def close(self, code: int, reason: str) -> None:
        """End the connection from the gateway's side: the instance first, then the client."""
        if self.closing is None:
            self.closing = (code, reason)
            asyncio.get_running_loop().create_task(self.upstream.close(code, reason))


class WebSockets:
    """The open WebSocket connections of one gateway, per service: counted, capped and drained."""

    __slots__ = ("_gauge", "counts", "empty", "open")

    def __init__(self, gauge: Any) -> None:
        self._gauge = gauge
        self.counts: dict[str, int] = {}
        self.open: set[Relay] = set()
        self.empty = asyncio.Event()
        self.empty.set()

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

    def add(self, relay: Relay) -> None:
        self.open.add(relay)
        self.empty.clear()

    def discard(self, relay: Relay) -> None:
        self.open.discard(relay)
        if not self.open:
            self.empty.set()

    async def drain(self, timeout: float) -> None:
        """Close every connection with 1001 and wait up to ``timeout`` for them to end."""
        for relay in list(self.open):
            relay.close(1001, "gateway shutting down")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.empty.wait()


class WebSocketProxy:
    """Serve ``websocket`` scopes for ``ProxyApp``."""

    def __init__(self, runtime: Runtime, forwarder: Forwarder) -> None:
        self.rt = runtime
        self.fw = forwarder
        self.sockets: WebSockets = runtime.websockets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Proxy one WebSocket connection from upgrade to close, then write its access line."""
        req = ProxyRequest({**scope, "method": "GET"}, receive, send)
        ex = Exchange()
        relay: Relay | None = None
        await receive()  # websocket.connect
        try:
            route = req.match(self.rt.snapshot)
            if self.rt.draining:
                raise Overloaded("the gateway is shutting down", route.guard.options.limits.retry_after)
            for stage in route.request_stages:
                reply = await stage(req)
                if reply is not None:
                    await self._deny(req, ex, reply.status, list(reply.headers), reply.body)
                    return
            if not self.sockets.admit(route.name, route.spec.options.websocket.max_connections):
                self.fw.metrics.overflow.labels(route.name).inc()
                raise Overloaded(
                    f"too many WebSocket connections to {route.name!r}",
                    route.guard.options.limits.retry_after,
                )
            try:
                upstream = await self._connect(route, req, ex)
                if upstream is not None:
                    relay = Relay(upstream, route.spec.options.websocket.idle_timeout)
                    await self._relay(req, ex, relay)
            finally:
                self.sockets.leave(route.name)
        except HTTPError as exc:
            ex.error = exc.kind if isinstance(exc, UpstreamError) else exc.error
            status, headers, body = render(exc, req.request_id)
            await self._deny(req, ex, status, headers, body)
        finally:
            self._account(req, ex, relay)

    async def _connect(self, route: ServiceRoute, req: ProxyRequest, ex: Exchange) -> ClientConnection | None:
        """Open the instance's side, trying another instance when one cannot be reached; None: refused."""
        attempts = Attempts(self.fw, route, req, ex, None)
        options = route.spec.options
        for n in range(options.retry.max_retries + 1):
            lease = attempts.admit()
            headers = attempts.upstream_headers(lease.instance)
            try:
                upstream = await open_upstream(
                    lease.instance, req.target, headers, req.scope.get("subprotocols", ()), options
                )
            except InvalidStatus as exc:
                self.fw.report(route, lease, outlier.outcome_for_status(exc.response.status_code))
                resp = exc.response
                pairs = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers.raw_items()]
                out = downstream_response_headers(pairs, req.request_id.encode("ascii"))
                await self._deny(req, ex, resp.status_code, out, bytes(resp.body or b""))
                return None
            except (OSError, TimeoutError, WebSocketException) as exc:
                self.fw.report(route, lease, outlier.Outcome.GATEWAY_FAILURE)
                kind = "connect_error" if isinstance(exc, (OSError, TimeoutError)) else "protocol_error"
                route.upstream_errors.labels(route.name, kind).inc()
                if n == options.retry.max_retries or kind != "connect_error":
                    raise UpstreamError(f"the instance's WebSocket handshake failed: {kind}", kind) from None
                continue
            finally:
                lease.release()
            self.fw.report(route, lease, outlier.Outcome.SUCCESS)
            return upstream
        raise NoHealthyInstance(f"no healthy instance of {route.name!r}")  # max_retries + 1 >= 1: unreachable

    async def _relay(self, req: ProxyRequest, ex: Exchange, relay: Relay) -> None:
        upstream = relay.upstream
        await req.send(
            {
                "type": "websocket.accept",
                "subprotocol": upstream.subprotocol,
                "headers": [(b"x-request-id", req.request_id.encode())],
            }
        )
        ex.status = 101
        self.sockets.add(relay)
        down = asyncio.get_running_loop().create_task(self._downstream(req, relay))
        watchdog = _Watchdog(relay)
        try:
            code = await self._upstream(req, relay)
            if relay.closing is None:  # the client left or closed: the instance hears the same
                relay.closing = (code, "")
                await upstream.close(1001 if code in _NO_CODE else code)
            await down
        finally:
            watchdog.cancel()
            down.cancel()
            self.sockets.discard(relay)
            await upstream.close()
            ex.nbytes = relay.bytes_out

    @staticmethod
    async def _upstream(req: ProxyRequest, relay: Relay) -> int:
        """Forward the client's messages to the instance until the client disconnects; return its code."""
        upstream, receive = relay.upstream, req.receive
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return int(message.get("code", 1005))
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            relay.bytes_in += len(data) if isinstance(data, bytes) or data.isascii() else len(data.encode())
            relay.last = time.monotonic()
            with contextlib.suppress(ConnectionClosed):
                await upstream.send(data)

    @staticmethod
    async def _downstream(req: ProxyRequest, relay: Relay) -> None:
        """Forward the instance's messages to the client; then pass its close on."""
        upstream, send = relay.upstream, req.send
        try:
            async for data in upstream:
                relay.last = time.monotonic()
                if isinstance(data, str):
                    relay.bytes_out += len(data) if data.isascii() else len(data.encode())
                    await send({"type": "websocket.send", "text": data})
                else:
                    relay.bytes_out += len(data)
                    await send({"type": "websocket.send", "bytes": data})
        except ConnectionClosed:
            pass
        except OSError:  # the client is gone: the other direction sees its disconnect
            return
        if relay.closing is not None:
            code, reason = relay.closing
        elif upstream.protocol.close_rcvd is None:
            code, reason = BAD_GATEWAY, "the instance went away"
        else:
            code, reason = upstream.protocol.close_rcvd.code, upstream.protocol.close_rcvd.reason
        with contextlib.suppress(Exception):  # the client may be gone already
            await send(
                {"type": "websocket.close", "code": 1000 if code in _NO_CODE else code, "reason": reason}
            )

    @staticmethod
    async def _deny(
        req: ProxyRequest, ex: Exchange, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        """Answer the upgrade with an HTTP response (ASGI's websocket.http.response extension)."""
        ex.status, ex.nbytes = status, len(body)
        if "websocket.http.response" not in req.scope.get("extensions", {}):
            await req.send({"type": "websocket.close", "code": 1008})
            return
        headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
        headers.append((b"content-length", b"%d" % len(body)))
        await req.send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await req.send({"type": "websocket.http.response.body", "body": body})

    def _account(self, req: ProxyRequest, ex: Exchange, relay: Relay | None) -> None:
        log_access(self.rt.access, req, ex, relay.bytes_in if relay is not None else 0)


class _Watchdog:
    """Close a relay that carried no message for its idle timeout (one timer, re-armed lazily)."""

    __slots__ = ("_handle", "_relay")

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._handle = asyncio.get_running_loop().call_later(relay.idle, self._check)

    def _check(self) -> None:
        relay = self._relay
        left = relay.last + relay.idle - time.monotonic()
        if left > 0:
            self._handle = asyncio.get_running_loop().call_later(left, self._check)
        else:
            relay.close(1000, "idle timeout")

    def cancel(self) -> None:
        self._handle.cancel()
