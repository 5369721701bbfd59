"""The HTTP/1.1 server protocol with client-side limits: request line, head size, header count, head deadline.

uvicorn accepts a request head of any size and waits for it forever, so a slowloris client (one
byte every few seconds) holds a connection as long as it likes and a 1 MB header is buffered.
``GatewayHttpProtocol`` adds, per connection:

* a request target longer than ``max_request_line`` -> **414**;
* a head larger than ``max_header_bytes`` or with more than ``max_headers`` headers -> **431**;
* a head not complete ``head_timeout`` seconds after its first byte -> **408**;
* a request httptools cannot parse -> **400** (uvicorn answers it in plain text; here JSON);
* request framing beyond what llhttp checks (RFC 9112 sections 6 and 7): a ``Transfer-Encoding``
  other than exactly one ``chunked`` (any case, optional whitespace around it) -> **501**, a second
  ``Transfer-Encoding`` line, one next to ``Content-Length`` or on HTTP/1.0 -> **400**; all before the
  request reaches the application, so no byte of it goes upstream;
* a chunked body that does not parse (bare LF, no CRLF after the data, a bad or overflowing size,
  an invalid extension, oversized extensions or trailers) -> **400** at once, and the request
  in progress sees a disconnect, so the proxy aborts its upstream connection instead of pooling it.

Each answer is the gateway's JSON error body with ``Connection: close``, logged once on
``msa_gateway.server`` at info level (client address and reason, never a header value). The connection is
then closed gracefully: the write side is shut, and what the client still sends is read and
dropped until it has been quiet for ``LINGER_IDLE`` or for ``LINGER`` seconds at most (so the
answer is not lost to a reset when the client is still sending), then it closes.

How it is measured, cheaply (this is the hot path):

* ``data_received`` keeps the length of the current chunk and, while a head is incomplete, adds
  it to a counter. ``_head_first`` (the chunk in which the head began, when it may also hold
  the end of the previous request) + ``_head_rest`` (the chunks since; the first one too when
  the connection was idle, as it nearly always is) bound the head from above, ``_head_rest``
  from below.
* ``on_headers_complete`` compares the header count with its limit and the upper bound with
  the smaller of the two byte limits (the URL is part of the head); only when one is over does
  it check exactly: the URL's length, the count, and the parsed head's size written
  canonically (``head_size``: its size on the wire unless padded with whitespace).
* An incomplete head is checked after each chunk once the upper bound passes the smaller
  limit: URL length, header count, and the lower bound. So an incomplete head is cut by the
  chunk that takes it over ``max_header_bytes`` (by the next one when it began in a chunk that
  also held the end of the previous request): at most the limit plus one read (two) is buffered.
* One timer per connection: the head's deadline is a float set on ``on_message_begin``; the
  timer is armed only when none is pending, and when it fires it re-arms for a later head or
  answers 408. While the connection still owes earlier (pipelined) responses or uvicorn has
  paused reading, the deadline moves on: the client is not the one keeping it waiting.

The application task of a request is created when ``feed_data`` returns, not inside the parser
callback: when the same chunk of bytes also holds a malformed body, the request is answered 400
and never reaches the application (nor the upstream).

Idle connections: uvicorn's keep-alive timeout applies. It is also armed when a connection is
accepted (uvicorn never closes a connection that sends nothing), and cancelled when a request
begins rather than on any byte, so bare CRLFs (which httptools skips) do not keep an idle
connection open either. The keep-alive timer no longer stops when the client keeps sending a
body nobody reads after its response: the connection is closed at the keep-alive timeout.
Like the head's deadline, the keep-alive timeout is a deadline (``_idle_deadline``) watched by one
timer per connection, armed only when none is pending, instead of a timer made after every
response and cancelled by the next request.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Callable
from typing import Any

import httptools
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT

from msa_gateway.busy_poll import BusyPoll, busy_poll
from msa_gateway.connection_worker import ConnectionWorker
from msa_gateway.http_connection import HttpConnection
from msa_gateway.proxy.headers import request_id_from
from msa_gateway.request_cycle import RequestCycle
from msa_gateway.server_rules import (
    Rejection,
    ServerLimits,
    framing_problem,
    head_size,
    response_bytes,
    too_large_head,
    too_long_url,
    too_many_headers,
    too_much_framing,
)
from msa_gateway.ws_upgrade import UpgradedConnection, websocket_scope

log = logging.getLogger("msa_gateway.server")

LINGER = 2.0  # at most this long, a rejected client's data is read and dropped before closing
LINGER_IDLE = 0.25  # ... and not longer than this after its last byte (nginx: lingering_time/_timeout)
_EARLY = 0.005  # a timer may fire this much before its deadline
_TASK_NAME = "http-request"  # every request task's name (uvicorn's tasks are unnamed: "Task-N")
_Task = asyncio.Task
_MAX_WRAPPERS = 8  # middleware layers looked through for the gateway app (a loop of them ends the search)
_CHUNK_FRAMING = 24  # a chunk's size line (16 hex digits + CRLF) and the CRLF after its data, with room


def flush_held(app: Any) -> None:
    """Write what the proxy holds for the end of the turn (``write_batch``) before writing directly.

    The batch is the gateway app's, found through any middleware uvicorn wrapped around it.
    """
    for _ in range(_MAX_WRAPPERS):
        batch = getattr(app, "write_batch", None)
        if batch is not None:
            batch.flush()
            return
        app = getattr(app, "app", None)
        if app is None:
            return


class _Rejected(Exception):
    """Raised from a parser callback to stop parsing; the reason is on the protocol."""


class GatewayHttpProtocol(HttpConnection):
    """An ``HttpConnection`` with ``limits``; uvicorn builds one per connection through ``make_protocol``."""

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        limits: ServerLimits | None = None,
        poller: BusyPoll | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits = limits if limits is not None else ServerLimits()
        self._poller = poller  # BUSY_POLL_US: client traffic keeps the loop polling for a while
        self._max_url = limits.max_request_line
        self._max_bytes = limits.max_header_bytes
        self._max_headers = limits.max_headers
        self._head_timeout = limits.head_timeout
        self._gate = min(limits.max_request_line, limits.max_header_bytes)
        self._chunk = 0  # length of the chunk being parsed
        self._head_first = 0  # length of the chunk in which the current head began
        self._head_rest = 0  # bytes received since that chunk, while the head is incomplete
        self._head_deadline = 0.0  # loop time by which the head must be complete; 0.0: no head open
        self._timer: asyncio.TimerHandle | None = None
        self._idle_deadline = 0.0  # loop time at which an idle connection closes; 0.0: not idle
        self._idle_timer: asyncio.TimerHandle | None = None
        self._rejection: Rejection | None = None
        self._linger_last = 0.0
        self._feeding = False  # inside parser.feed_data: a request's task starts once it returns
        self._pending: tuple[Any, Any] | None = None  # (cycle, app) whose task is not created yet
        self._framing_left: int | None = None  # in a chunked body: bytes extensions + trailers may still use
        self._direct: Callable[[Any], Any] | None = getattr(self.app, "direct_app", None)
        self._scope_base: dict[str, Any] = {}
        self._fresh_context = bool(config.reset_contextvars)  # each request's task in a new context
        self._plain_tasks = True  # the loop has no task factory (checked when the connection is made)
        # The worker gets the app's flush, not this protocol's: no reference cycle through it.
        self._worker = ConnectionWorker(self.loop, self.tasks, functools.partial(flush_held, self.app))

    # --- connection ---------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        """Register the connection; it is idle until its first request begins."""
        super().connection_made(transport)
        self._plain_tasks = self.loop.get_task_factory() is None
        # What every request's scope on this connection shares, in uvicorn's key order (its
        # ``on_message_begin`` writes these nine keys per request; here seven are copied in C).
        self._scope_base = {
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": self.root_path,
        }
        self._go_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        """Tell the request in progress, and drop the connection's timers."""
        super().connection_lost(exc)
        self._worker.close()
        self._unset_keepalive_if_required()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        """Count the bytes of an open head, parse, and check an incomplete head against the limits."""
        if self._rejection is not None:
            self._linger_last = self.loop.time()
            return  # answered already: drop whatever the client still sends
        self._chunk = n = len(data)
        if self._poller is not None:
            self._poller.arm(self.loop)
        if self._head_deadline:
            self._head_rest += n
        if self._framing_left is not None:  # inside a chunked body: charge the read, refund its data
            self._framing_left -= n
        if not self._feed(data):
            return
        if self._framing_left is not None and self._framing_left < 0:
            self._reject(too_much_framing(self._max_bytes))  # before its task starts, if it has not
            return
        if self._pending is not None:
            self._start_pending()
        if self._head_deadline and self._head_first + self._head_rest > self._gate:
            self._check_incomplete_head()

    def _feed(self, data: bytes) -> bool:
        """Parse ``data``; return False when parsing ended the exchange (rejected or upgraded)."""
        self._feeding = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            self._feeding = False
            if self._rejection is None:
                self._reject(Rejection(400, "bad_request", "invalid HTTP request", "invalid_http"))
            else:
                self._answer()
            return False
        except httptools.HttpParserError:
            self._feeding = False
            if self._framing_left is not None:
                self._reject(Rejection(400, "bad_request", "invalid chunked body", "invalid_chunked"))
            else:
                self._reject(Rejection(400, "bad_request", "invalid HTTP request", "invalid_http"))
            return False
        except httptools.HttpParserUpgrade:
            self._feeding = False
            self._start_pending()
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        self._feeding = False
        return True

    def handle_websocket_upgrade(self) -> None:
        """Hand the connection to the proxy (``ws_upgrade.py``), not to uvicorn's WebSocket protocol."""
        self._flush_held()
        if self.scope["method"] != "GET" or self.parser.get_http_version() != "1.1":
            self._reject(
                Rejection(400, "bad_request", "a WebSocket upgrade is a GET on HTTP/1.1", "invalid_upgrade")
            )
            return
        self.connections.discard(self)
        self._worker.close()
        self._unset_keepalive_if_required()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        upgraded = UpgradedConnection(self.transport, self.server_state)
        scope = websocket_scope(dict(self.scope), self.url, self.root_path, upgraded)
        self.transport.set_protocol(upgraded)
        task = self.loop.create_task(self.app(scope, upgraded.receive, upgraded.send))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(upgraded.app_done)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        """Hold a request's task back while its bytes are being parsed (see the module docstring)."""
        if self._feeding:
            self._pending = (cycle, app)
        else:
            self._create_task(cycle, app)

    def _start_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self._create_task(*pending)

    def _create_task(self, cycle: Any, app: Any) -> None:
        """Start the request's task as uvicorn does, but named, or hand it to the connection's worker.

        A request the app's ``direct_app`` names a handler for (the proxy, app.py) runs without
        uvicorn's ``run_asgi`` around it; that handler answers its own failures. Such requests
        run in turn in the connection's one task (connection_worker.py) unless each must have a
        context of its own or the loop has a task factory. Without a task factory the task is
        built as the loop's ``create_task`` builds it, but with its name given: uvloop formats a
        default name for every task and then replaces it.
        """
        direct = self._direct(cycle.scope) if self._direct is not None and app is self.app else None
        if direct is not None and self._plain_tasks and not self._fresh_context:
            self._worker.serve(direct, cycle)
            return
        coro = cycle.run_asgi(app) if direct is None else direct(cycle.scope, cycle.receive, cycle.send)
        context = contextvars.Context() if self._fresh_context else None
        if self._plain_tasks:
            task: asyncio.Task[None] = _Task(coro, loop=self.loop, name=_TASK_NAME, context=context)
        else:
            task = self.loop.create_task(coro, name=_TASK_NAME, context=context)
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    # --- keep-alive ---------------------------------------------------------------------

    def on_response_complete(self) -> None:
        """uvicorn's, but idle means a deadline for the connection's one keep-alive timer."""
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self._poller is not None:  # the client's next request is likely on its way
            self._poller.arm(self.loop)
        if self.flow.read_paused:  # read first: resume_reading is an interpreted call
            self.flow.resume_reading()
        if self.pipeline:  # the next pipelined request starts
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._go_idle()

    def shutdown(self) -> None:
        """Close when idle, else after the response in progress (a held response is written first)."""
        self._flush_held()
        super().shutdown()

    def _flush_held(self) -> None:
        """``flush_held`` for this connection's app."""
        flush_held(self.app)

    def _go_idle(self) -> None:
        self._idle_deadline = deadline = self.loop.time() + self.timeout_keep_alive
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_at(deadline, self._on_idle_timer)

    def _unset_keepalive_if_required(self) -> None:
        """Not idle any more (uvicorn calls this when the connection is lost)."""
        self._idle_deadline = 0.0
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _on_idle_timer(self) -> None:
        self._idle_timer = None
        deadline = self._idle_deadline
        if not deadline:
            return  # busy: the next response arms a timer
        if self.loop.time() < deadline - _EARLY:  # idle again since the timer was armed
            self._idle_timer = self.loop.call_at(deadline, self._on_idle_timer)
        else:
            self._flush_held()  # a keep-alive timeout shorter than a turn: the last response first
            self.timeout_keep_alive_handler()

    # --- parser callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        """Begin the request's scope as uvicorn does; start the head's deadline (and the connection timer)."""
        self.url = b""
        self.expect_100_continue = False
        headers: list[tuple[bytes, bytes]] = []
        self.headers = headers
        scope = self._scope_base.copy()
        scope["headers"] = headers
        scope["state"] = self.app_state.copy()
        self.scope = scope
        idle = self._idle_deadline
        self._idle_deadline = 0.0
        if idle and (self.cycle is None or not self.cycle.more_body):
            # Idle (keep-alive armed, previous request fully read) when this chunk came: the head opens it.
            self._head_first, self._head_rest = 0, self._chunk
        else:  # the chunk may begin with the end of the previous request
            self._head_first, self._head_rest = self._chunk, 0
        self._head_deadline = deadline = self.loop.time() + self._head_timeout
        if self._timer is None:
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def on_headers_complete(self) -> None:
        """Check the complete head against the limits, then begin the request's cycle."""
        self._head_deadline = 0.0
        self._idle_deadline = 0.0  # set while this head was arriving (an earlier response ended)
        # The URL and the head are no longer than the bytes received since the head began.
        if self._head_first + self._head_rest > self._gate or len(self.headers) > self._max_headers:
            self._check_complete_head()
        http_version: str = self.parser.get_http_version()  # a new string per call: read once
        chunked = framing_problem(self.headers, http_version)
        if chunked is not False:
            if chunked is not True:
                self._rejection = chunked
                raise _Rejected
            self._framing_left = self._max_bytes  # budget for chunk extensions and trailers
            if not self._head_first:  # the head began this run of reads: charge what follows it
                head = head_size(self.parser.get_method(), self.url, self.headers)
                self._framing_left -= max(0, self._head_rest - head)
            self._begin_cycle(http_version)
            # httptools reports trailer fields through on_header: let them land in a copy, never in
            # the headers of the request the application is already serving.
            self.headers = list(self.headers)
            return
        self._begin_cycle(http_version)

    def on_chunk_header(self) -> None:
        """Count the size line and the CRLF after the data as framing, not as extensions.

        No check here: the whole read was charged before parsing and the data after this header
        is refunded only as it is parsed, so mid-read the balance is short by the rest of the
        read (a 64 KiB read of plain chunks would look like 32 KiB of extensions). The balance is
        exact after the read (``data_received``) and when the body ends with it.
        """
        if self._framing_left is not None:
            self._framing_left += _CHUNK_FRAMING

    def on_body(self, body: bytes) -> None:
        """Hand the body on; body bytes are not framing overhead."""
        if self._framing_left is not None:
            self._framing_left += len(body)
        cycle = self._receiving_cycle()
        if cycle is None:
            return
        cycle.body += body
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_message_complete(self) -> None:
        """A chunked body whose extensions or trailers were too large never completes.

        The balance is exact when the body ends the read; bytes of a next request in the same read
        count against it (only a client pipelining a large request behind the body meets that).
        """
        if self._framing_left is not None:
            self._check_framing()
            self._framing_left = None
        cycle = self._receiving_cycle()
        if cycle is None:
            return
        cycle.more_body = False
        cycle.message_event.set()

    def _receiving_cycle(self) -> RequestCycle | None:
        """Return the cycle the request's body goes to; None for an upgrade or an answered request."""
        cycle = self.cycle
        if (
            cycle is None
            or (self.parser.should_upgrade() and self._should_upgrade())
            or cycle.response_complete
        ):
            return None
        return cycle

    def _check_framing(self) -> None:
        if self._framing_left is not None and self._framing_left < 0:
            self._rejection = too_much_framing(self._max_bytes)
            raise _Rejected

    # --- checks -------------------------------------------------------------------------

    def _check_complete_head(self) -> None:
        if len(self.url) > self._max_url:
            self._rejection = too_long_url(self._max_url)
        elif len(self.headers) > self._max_headers:
            self._rejection = too_many_headers(self._max_headers)
        elif head_size(self.parser.get_method(), self.url, self.headers) > self._max_bytes:
            self._rejection = too_large_head(self._max_bytes)
        if self._rejection is not None:
            raise _Rejected  # stops the parser; data_received answers

    def _check_incomplete_head(self) -> None:
        if len(self.url) > self._max_url:
            self._reject(too_long_url(self._max_url))
        elif len(self.headers) > self._max_headers:
            self._reject(too_many_headers(self._max_headers))
        elif self._head_rest > self._max_bytes:
            self._reject(too_large_head(self._max_bytes))

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._head_deadline
        if not deadline or self.transport.is_closing():
            return  # no head open: the next one arms a new timer
        now = self.loop.time()
        if now < deadline - _EARLY:  # a later head opened since the timer was armed
            self._timer = self.loop.call_at(deadline, self._on_timer)
        elif self._owes_response() or self.flow.read_paused:
            self._head_deadline = deadline = now + self._head_timeout
            self._timer = self.loop.call_at(deadline, self._on_timer)
        else:
            detail = f"the request head was not received within {self._head_timeout:g} s"
            self._reject(Rejection(408, "request_timeout", detail, "head_timeout"))

    # --- answering ----------------------------------------------------------------------

    def _owes_response(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _reject(self, rejection: Rejection) -> None:
        self._rejection = rejection
        self._answer()

    def _answer(self) -> None:
        """Log the rejection, answer it (or close after the responses still owed), and linger."""
        rejection = self._rejection
        assert rejection is not None
        self._flush_held()  # a response held for the end of the turn goes before the answer
        self._head_deadline = 0.0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._unset_keepalive_if_required()
        headers: list[tuple[bytes, bytes]] = getattr(self, "headers", None) or []
        rid = request_id_from(next((v for k, v in headers if k == b"x-request-id"), None))
        client = f"{self.client[0]}:{self.client[1]}" if self.client else ""
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_complete:
            # The current request's body is broken. Not started yet: it never reaches the
            # application. Started: it sees a disconnect (the proxy aborts its upstream connection);
            # the client gets the 400 unless a response began. Queued behind another: close.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started or self.pipeline:
                self.pipeline.clear()
                self._pending = None
                self._log_rejection(rejection, client, rid, len(headers), answered=False)
                self.transport.close()
                return
            self._pending = None  # nothing queued before it: the pending task, if any, is its own
            busy = False
        else:
            self._start_pending()  # a complete request parsed before the bad bytes is served
            busy = self._owes_response()
        self._log_rejection(rejection, client, rid, len(headers), answered=not busy)
        if self.transport.is_closing():
            return
        if busy and cycle is not None:
            cycle.keep_alive = False  # earlier pipelined responses come first; it closes after the last
            return
        self.transport.write(
            response_bytes(
                rejection.status,
                rejection.error,
                rejection.detail,
                rid,
                list(self.server_state.default_headers),
            )
        )
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._linger_last = now = self.loop.time()
            self._timer = self.loop.call_at(now + LINGER_IDLE, self._linger, now + LINGER)
        else:
            self.transport.close()

    def _log_rejection(
        self, rejection: Rejection, client: str, rid: str, nheaders: int, *, answered: bool
    ) -> None:
        log.info(
            "client_rejected",
            extra={
                "status": rejection.status,
                "reason": rejection.reason,
                "client": client,
                "request_id": rid,
                "head_bytes": self._head_first + self._head_rest,
                "headers": nheaders,
                "answered": answered,
            },
        )

    def _linger(self, until: float) -> None:
        """Close once the client has been quiet for ``LINGER_IDLE`` or at ``until``."""
        self._timer = None
        when = min(self._linger_last + LINGER_IDLE, until)
        if self.loop.time() >= when - _EARLY:
            self.transport.close()
        else:
            self._timer = self.loop.call_at(when, self._linger, until)


class ProtocolFactory:
    """``uvicorn.Config(http=...)``: builds a ``GatewayHttpProtocol`` enforcing ``limits`` per connection."""

    def __init__(self, limits: ServerLimits, poller: BusyPoll | None = None) -> None:
        self.limits = limits
        self.poller = poller  # one for every connection of the server

    def __call__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> GatewayHttpProtocol:
        return GatewayHttpProtocol(config, server_state, app_state, _loop, self.limits, self.poller)


def make_protocol(limits: ServerLimits, busy_poll_us: int = 0) -> ProtocolFactory:
    """Return the protocol factory enforcing ``limits``, for ``uvicorn.Config(http=...)``.

    ``busy_poll_us`` (``BUSY_POLL_US``): how long client traffic keeps the loop polling; 0 = off.
    """
    return ProtocolFactory(limits, busy_poll(busy_poll_us))


__all__ = [
    "LINGER",
    "LINGER_IDLE",
    "GatewayHttpProtocol",
    "ProtocolFactory",
    "ServerLimits",
    "framing_problem",
    "head_size",
    "make_protocol",
    "response_bytes",
]
