"""The proxy as a raw ASGI app: route -> pick -> forward -> stream back.

This is the hot path. It reads the registry snapshot once, routes on the raw path, lets the
health-filtered balancer pick an instance, streams the request body up and the response
body down chunk by chunk (never a whole body in memory), and ends with one access line and
the request metrics. Errors become JSON only through ``errors.render``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from msa_gateway.errors import (
    BadRequest,
    HTTPError,
    NoHealthyInstance,
    ServiceNotFound,
    UpstreamError,
    render,
)
from msa_gateway.model import Instance
from msa_gateway.observability.metrics import UNKNOWN_SERVICE, method_label
from msa_gateway.proxy.headers import (
    downstream_response_headers,
    is_trusted,
    request_id_from,
    upstream_request_headers,
)
from msa_gateway.proxy.paths import check_segments, split_service, upstream_target
from msa_gateway.proxy.upstream import UpstreamResponse
from msa_gateway.registry.snapshot import ServiceRoute

if TYPE_CHECKING:
    from msa_gateway.runtime import Runtime

Scope = dict[str, Any]
Message = dict[str, Any]
log = logging.getLogger("msa_gateway.proxy")

STATUS_CLIENT_GONE = 499


class ClientGone(Exception):
    """The client disconnected before the exchange finished."""


class _Exchange:
    """Mutable per-request facts the handler and the access line share."""

    __slots__ = ("body_done", "client_gone", "error", "nbytes", "started_response", "status")

    def __init__(self) -> None:
        self.status = 500
        self.nbytes = 0
        self.started_response = False
        self.body_done = True
        self.client_gone = False
        self.error: str | None = None


class ProxyApp:
    """Forward ``/{service}/{path}`` to a healthy instance of ``service``."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        """Serve one HTTP request (websocket upgrades are refused: not supported yet)."""
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1003})
            return
        rt = self.rt
        started = time.perf_counter()
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        rid_raw = None
        content_length: int | None = None
        chunked = False
        for hname, hvalue in headers:
            if hname == b"x-request-id":
                rid_raw = hvalue
            elif hname == b"content-length":
                content_length = int(hvalue) if hvalue.isdigit() else -1
            elif hname == b"transfer-encoding":
                chunked = True
        request_id = request_id_from(rid_raw)
        method: str = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        snapshot = rt.snapshot
        ex = _Exchange()
        route: ServiceRoute | None = None
        instance: Instance | None = None
        error: str | None = None
        client = scope.get("client")
        peer = client[0] if client else None
        metrics = rt.metrics
        metrics.in_flight.inc()
        try:
            name, rest = split_service(raw_path)
            route = snapshot.services.get(name)
            if route is None:
                raise ServiceNotFound(
                    f"no service is registered under {name!r}" if name else "no service in path"
                )
            check_segments(rest)
            if content_length is not None and content_length < 0:
                raise BadRequest("invalid Content-Length")
            eligible = route.eligible
            if not eligible:
                raise NoHealthyInstance(f"no healthy instance of {route.name!r}")
            instance = route.balancer.pick(eligible)
            try:
                await self._forward(
                    scope,
                    receive,
                    send,
                    ex,
                    route,
                    instance,
                    rest,
                    request_id,
                    peer,
                    content_length if not chunked else None,
                    chunked or bool(content_length),
                )
            finally:
                route.balancer.done(instance)
        except HTTPError as exc:
            if isinstance(exc, UpstreamError) and route is not None:
                route.upstream_errors.labels(route.name, exc.kind).inc()
                error = exc.kind
            elif isinstance(exc, BadRequest | ServiceNotFound | NoHealthyInstance):
                error = exc.error
            if ex.client_gone:
                ex.status = STATUS_CLIENT_GONE
            elif not ex.started_response:
                status, hdrs, body = render(exc, request_id)
                await send({"type": "http.response.start", "status": status, "headers": hdrs})
                await send({"type": "http.response.body", "body": body})
                ex.status, ex.nbytes = status, len(body)
        finally:
            metrics.in_flight.dec()
            mlabel = method_label(method)
            if route is not None:
                route.count(mlabel, ex.status)
                route.duration.observe(time.perf_counter() - started)
            else:
                rt.count_unknown(mlabel, ex.status)
            rt.access.log(
                method=method,
                path=raw_path.decode("latin-1"),
                status=ex.status,
                started=started,
                request_id=request_id,
                service=route.name if route is not None else UNKNOWN_SERVICE,
                instance=instance.address if instance is not None else "-",
                nbytes=ex.nbytes,
                client=peer or "-",
                error=error or ex.error,
            )

    async def _forward(
        self,
        scope: Scope,
        receive: Any,
        send: Any,
        ex: _Exchange,
        route: ServiceRoute,
        instance: Instance,
        rest: bytes,
        request_id: str,
        peer: str | None,
        content_length: int | None,
        has_body: bool,
    ) -> None:
        rt = self.rt
        options = route.spec.options
        up_headers = upstream_request_headers(
            scope["headers"],
            peer=peer,
            scheme=scope.get("scheme", "http"),
            prefix=route.prefix,
            request_id=request_id,
            upstream_host=instance.address,
            trusted=is_trusted(peer, rt.config.trusted_proxies),
            pass_host_header=options.pass_host_header,
            content_length=content_length if has_body else None,
        )
        body = self._body(receive, ex) if has_body else None
        try:
            resp = await rt.upstream.send(
                instance,
                options,
                scope["method"],
                upstream_target(rest, scope["query_string"]),
                up_headers,
                body,
                content_length,
            )
        except UpstreamError as exc:
            if ex.client_gone:
                raise UpstreamError("client went away", "client_gone") from None
            raise exc from None
        try:
            await self._stream_back(receive, send, ex, resp, request_id)
        finally:
            resp.release()

    async def _stream_back(
        self, receive: Any, send: Any, ex: _Exchange, resp: UpstreamResponse, request_id: str
    ) -> None:
        first = await resp.read()
        out_headers = downstream_response_headers(resp.headers, request_id.encode("ascii"))
        ex.status = resp.status
        ex.started_response = True
        await send({"type": "http.response.start", "status": resp.status, "headers": out_headers})
        ex.nbytes = len(first)
        if resp.at_eof():
            await send({"type": "http.response.body", "body": first})
            return
        await send({"type": "http.response.body", "body": first, "more_body": True})
        watcher = None
        if ex.body_done:
            watcher = asyncio.get_running_loop().create_task(
                _watch_disconnect(receive, ex, resp), name="proxy:watch"
            )
        try:
            while True:
                try:
                    chunk = await resp.read()
                except UpstreamError as exc:
                    ex.error = exc.kind
                    if not ex.client_gone:
                        log.warning(
                            "upstream failed mid-response; closing the client connection",
                            extra={"kind": exc.kind, "bytes": ex.nbytes, "request_id": request_id},
                        )
                    return
                if not chunk:
                    break
                ex.nbytes += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if ex.client_gone:
                    return
            await send({"type": "http.response.body", "body": b""})
        finally:
            if watcher is not None and not watcher.done():
                watcher.cancel()
                with contextlib.suppress(BaseException):
                    await watcher
            if ex.client_gone:
                ex.status = STATUS_CLIENT_GONE

    @staticmethod
    async def _body(receive: Any, ex: _Exchange) -> AsyncIterator[bytes]:
        ex.body_done = False
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                ex.client_gone = True
                raise ClientGone
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            if chunk:
                yield chunk
        ex.body_done = True


async def _watch_disconnect(receive: Any, ex: _Exchange, resp: UpstreamResponse) -> None:
    """Wait for the client to go away during a streamed response; then abort the upstream exchange."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            ex.client_gone = True
            resp.close()
            return
