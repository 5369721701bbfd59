"""One proxied exchange's shared state and its two streams: the request body up, the response down.

``Exchange`` holds the mutable facts the handler and the access line share. ``open_body`` decides
whether the client's body is read whole first (small, or kept for a retry) or streamed through;
``BodyStream`` hands it on as it arrives (size limit, idle timeout, disconnect); ``stream_back``
relays an upstream response chunk by chunk, after the route's response stages saw its head, and
aborts the upstream side when the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from msa_gateway.errors import HTTPError, PayloadTooLarge, RequestTimeout, UpstreamError
from msa_gateway.model import ServiceOptions
from msa_gateway.observability.metrics import UNKNOWN_SERVICE
from msa_gateway.proxy.headers import downstream_response_headers
from msa_gateway.proxy.redirects import Redirects
from msa_gateway.proxy.retry import IDEMPOTENT_METHODS
from msa_gateway.proxy.upstream import UpstreamResponse
from msa_gateway.uvicorn_cycle import abort, body_waiting, take_body, take_whole_body, write_whole
from msa_gateway.write_batch import DIRECT, WriteBatch

if TYPE_CHECKING:
    from msa_gateway.observability.access import AccessLog
    from msa_gateway.policies.base import ResponseStage
    from msa_gateway.proxy.request import ProxyRequest

log = logging.getLogger("msa_gateway.proxy")

STATUS_CLIENT_GONE = 499
SMALL_BODY = 64 * 1024  # bodies up to this size (with a Content-Length) are read whole before sending


class ClientGone(Exception):
    """The client disconnected, stalled or sent too much before the exchange finished."""


class Exchange:
    """Mutable per-request facts the handler and the access line share."""

    __slots__ = (
        "body_done",
        "body_started",
        "client_gone",
        "error",
        "instance",
        "nbytes",
        "received",
        "retry_refused",
        "started_response",
        "status",
        "too_large",
        "too_slow",
    )

    def __init__(self) -> None:
        self.status = 500
        self.nbytes = 0
        self.received = 0
        self.started_response = False
        self.body_started = False
        self.body_done = True
        self.client_gone = False
        self.too_large = False
        self.too_slow = False
        self.error: str | None = None
        self.instance = "-"
        self.retry_refused: str | None = None


def client_error(ex: Exchange, limit: int | None) -> HTTPError | None:
    """Return the error the client's own side caused (body too slow or too large), if any."""
    if ex.too_slow:
        return RequestTimeout("the request body stopped arriving")
    if ex.too_large:
        return PayloadTooLarge(f"the request body is larger than {limit} bytes")
    return None


def ready_body(req: ProxyRequest, ex: Exchange, options: ServiceOptions) -> bytes | None:
    """Return the body ``open_body`` would read whole when all of it is already there, else None.

    A small body mostly arrives with its head: taken here, it costs no coroutine (``open_body``,
    ``read_all`` and ``_next_part`` were three per request). None takes nothing.
    """
    if not req.has_body or not _read_whole(req, options):
        return None
    body = take_whole_body(req.receive)
    if body is not None:
        _count(ex, body, options.max_body_size)
    return body


async def open_body(
    req: ProxyRequest, ex: Exchange, options: ServiceOptions, idle: float
) -> bytes | BodyStream | None:
    """Return the request body to send: read whole when small or kept for a retry, else a stream.

    A small body then leaves with the head in one write; a larger one is kept in memory only
    when a retry after sending could happen (idempotent method, retries on, within
    ``retry.buffer_limit``), else it streams through.
    """
    if not req.has_body:
        return None
    if _read_whole(req, options):
        return await read_all(req.receive, ex, options.max_body_size, idle)
    return BodyStream(req.receive, ex, options.max_body_size, idle)


def _read_whole(req: ProxyRequest, options: ServiceOptions) -> bool:
    length = req.body_length
    policy = options.retry
    return (length is not None and length <= SMALL_BODY) or bool(
        policy.max_retries and req.method in IDEMPOTENT_METHODS and policy.can_buffer(length)
    )


async def stream_back(
    req: ProxyRequest,
    ex: Exchange,
    resp: UpstreamResponse,
    stages: tuple[ResponseStage, ...],
    redirects: Redirects | None = None,
    writes: WriteBatch = DIRECT,
) -> None:
    """Send the response head and body to the client as they arrive; never a whole body in memory.

    A response that arrived whole is written in one piece through ``writes`` (``write_batch``).
    """
    receive, send, request_id = req.receive, req.send, req.request_id
    first = await resp.read()
    out_headers = downstream_response_headers(resp.headers, request_id.encode("ascii"), redirects)
    for stage in stages:
        out_headers = stage(req, resp.status, out_headers)
    ex.status = resp.status
    ex.started_response = True
    ex.nbytes = len(first)
    if resp.at_eof():
        if not write_whole(send, resp.status, out_headers, first, writes):
            await send({"type": "http.response.start", "status": resp.status, "headers": out_headers})
            await send({"type": "http.response.body", "body": first})
        return
    await send({"type": "http.response.start", "status": resp.status, "headers": out_headers})
    await send({"type": "http.response.body", "body": first, "more_body": True})
    watcher = None
    if ex.body_done:
        watcher = asyncio.get_running_loop().create_task(
            watch_disconnect(receive, ex, resp), name="proxy:watch"
        )
    failure: BaseException | None = None
    try:
        await _relay(req, ex, resp)
    except BaseException as exc:  # kept until the watcher is gone: no await in a `finally` (compiled.txt)
        failure = exc
    if watcher is not None and not watcher.done():
        watcher.cancel()
        with contextlib.suppress(BaseException):  # its cancellation, or what it died of
            await watcher
    if ex.client_gone:
        ex.status = STATUS_CLIENT_GONE
    if failure is not None:
        raise failure


async def _relay(req: ProxyRequest, ex: Exchange, resp: UpstreamResponse) -> None:
    """Relay the rest of a streamed response; on an upstream failure, close the client's connection."""
    send = req.send
    while True:
        try:
            chunk = await resp.read()
        except UpstreamError as exc:
            ex.error = exc.kind
            if not ex.client_gone:
                log.warning(
                    "upstream failed mid-response; closing the client connection",
                    extra={"kind": exc.kind, "bytes": ex.nbytes, "request_id": req.request_id},
                )
                abort(send)
            return
        if not chunk:
            break
        ex.nbytes += len(chunk)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if ex.client_gone:
            return
    await send({"type": "http.response.body", "body": b""})


class BodyStream:
    """The request body as it arrives (size limit, idle timeout, disconnect): an async iterator.

    A class rather than an async generator: mypyc compiles no async generators.
    """

    __slots__ = ("ex", "idle", "limit", "more", "receive")

    def __init__(self, receive: Any, ex: Exchange, limit: int | None, idle: float) -> None:
        self.receive = receive
        self.ex = ex
        self.limit = limit
        self.idle = idle
        self.more = True

    def __aiter__(self) -> BodyStream:
        return self

    async def __anext__(self) -> bytes:
        ex = self.ex
        if not ex.body_started:  # the first part asked for (one stream per exchange)
            ex.body_done = False
            ex.body_started = True
        while self.more:
            chunk, self.more = await _next_part(self.receive, ex, self.limit, self.idle)
            if chunk:
                return chunk
        ex.body_done = True
        raise StopAsyncIteration


async def _next_part(receive: Any, ex: Exchange, limit: int | None, idle: float) -> tuple[bytes, bool]:
    """Return the next part of the body and whether more follows; ``ClientGone`` when it cannot.

    A part that is already there is taken from uvicorn's cycle without a message (``take_body``).
    """
    part = take_body(receive)
    if part is None:
        part = await _receive_part(receive, ex, idle)
    if part[0]:
        _count(ex, part[0], limit)
    return part


def _count(ex: Exchange, chunk: bytes, limit: int | None) -> None:
    """Count a part of the body received; ``ClientGone`` once it is more than ``limit`` in all."""
    ex.received += len(chunk)
    if limit is not None and ex.received > limit:
        ex.too_large = True
        raise ClientGone


async def _receive_part(receive: Any, ex: Exchange, idle: float) -> tuple[bytes, bool]:
    """Wait for the next part through ASGI ``receive``, at most ``idle`` seconds unless it is there."""
    if body_waiting(receive):
        message = await receive()
    else:
        try:
            async with asyncio.timeout(idle):
                message = await receive()
        except TimeoutError:
            ex.too_slow = True
            raise ClientGone from None
    if message["type"] == "http.disconnect":
        ex.client_gone = True
        raise ClientGone
    return message.get("body", b""), message.get("more_body", False)


async def read_all(receive: Any, ex: Exchange, limit: int | None, idle: float) -> bytes:
    """Return the whole request body (a small one, or one kept for replay)."""
    ex.body_done = False
    chunk, more = await _next_part(receive, ex, limit, idle)
    if more:  # arrived in parts: gather them
        parts = [chunk]
        while more:
            chunk, more = await _next_part(receive, ex, limit, idle)
            parts.append(chunk)
        chunk = b"".join(parts)
    ex.body_done = True
    return bytes(chunk)


async def watch_disconnect(receive: Any, ex: Exchange, resp: UpstreamResponse) -> None:
    """Wait for the client to go away during a streamed response; then abort the upstream exchange."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            ex.client_gone = True
            resp.close()
            return


def log_access(access: AccessLog, req: ProxyRequest, ex: Exchange, bytes_in: int | None = None) -> None:
    """Write the access line of a finished exchange (``bytes_in``: a WebSocket connection's)."""
    route = req.route
    access.log(  # by position, in the signature's order
        req.method,
        req.raw_path.decode("latin-1"),
        ex.status,
        req.started,
        req.request_id,
        route.name if route is not None else UNKNOWN_SERVICE,
        ex.instance,
        ex.nbytes,
        req.peer or "-",
        ex.error,
        ex.retry_refused,
        None if req.trace is None else req.trace.trace_text,
        bytes_in,
    )
