"""One HTTP/1.1 connection under uvicorn, as uvicorn's own httptools protocol serves it, compiled.

uvicorn builds a protocol object per connection and httptools calls its parser callbacks for
every request. ``HttpConnection`` does what uvicorn's ``HttpToolsProtocol`` does (the scope,
a ``RequestCycle`` per request: request_cycle.py, uvicorn's cycle compiled; pipelining, flow
control, the upgrade check, ``shutdown``) as a compiled class of its own: the callbacks run in
C, and its attributes are slots rather than an interpreted object's dictionary. The scope is
uvicorn's, key for key (tests/unit/server/test_uvicorn_pin.py compares them). ``protocol.py``
adds the client limits, the framing checks, the timers and the direct dispatch of proxied
requests on top.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections import deque
from typing import Any

import httptools
from httptools import parse_url
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import FlowControl, service_unavailable
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl

from msa_gateway.request_cycle import MessageEvent, RequestCycle


class HttpConnection:
    """uvicorn's httptools protocol: the state and callbacks every request of one connection shares.

    Not a protocol alone: ``data_received`` and the parser's begin, headers-complete, body and
    message-complete callbacks are ``GatewayHttpProtocol``'s (protocol.py), which checks each
    step against the limits before it calls what is here.
    """

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.config: Any = config
        self.app: Any = config.loaded_app
        self.loop: asyncio.AbstractEventLoop = _loop or asyncio.get_event_loop()
        self.logger = logging.getLogger("uvicorn.error")
        self.access_logger = logging.getLogger("uvicorn.access")
        self.access_log = self.access_logger.hasHandlers()
        self.parser: Any = httptools.HttpRequestParser(self)
        # Answer the first of pipelined requests even when the client half-closes after sending them.
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.ws_protocol_class: Any = config.ws_protocol_class
        self.root_path: str = config.root_path
        self.asgi_version: str = config.asgi_version
        self.limit_concurrency: int | None = config.limit_concurrency
        self.app_state = app_state
        self.timeout_keep_alive: float = config.timeout_keep_alive
        self.server_state: Any = server_state
        self.connections: set[Any] = server_state.connections
        self.tasks: set[asyncio.Task[None]] = server_state.tasks
        self.transport: Any = None
        self.flow: Any = None
        self.server: Any = None
        self.client: Any = None
        self.scheme = "http"
        self.pipeline: deque[tuple[Any, Any]] = deque()  # (cycle, app) of pipelined requests, oldest last
        self.url = b""
        self.scope: dict[str, Any] = {}
        self.headers: list[tuple[bytes, bytes]] = []
        self.expect_100_continue = False
        self.cycle: RequestCycle | None = None  # the latest request's

    def connection_made(self, transport: Any) -> None:
        """Register the connection and take its addresses."""
        self.connections.add(self)
        self.transport = transport
        self.flow = FlowControl(transport)
        self.server = get_local_addr(transport)
        self.client = get_remote_addr(transport)
        self.scheme = "https" if is_ssl(transport) else "http"
        if self.logger.level <= TRACE_LOG_LEVEL:
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", self._prefix())

    def connection_lost(self, exc: Exception | None) -> None:
        """Tell the request in progress that the client is gone."""
        self.connections.discard(self)
        if self.logger.level <= TRACE_LOG_LEVEL:
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection lost", self._prefix())
        cycle = self.cycle
        if cycle is not None:
            if not cycle.response_complete:
                cycle.disconnected = True
            cycle.message_event.set()
        if self.flow is not None:
            self.flow.resume_writing()
        if exc is None:
            self.transport.close()
        self.parser = None

    def shutdown(self) -> None:
        """Close when idle, else after the response in progress (uvicorn's server calls it on exit)."""
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()
        else:
            self.cycle.keep_alive = False

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        """Run the request's application (``protocol.py`` names the task and may skip ``run_asgi``)."""
        task = self.loop.create_task(cycle.run_asgi(app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def on_response_complete(self) -> None:
        """Called by the cycle once its response is complete (``protocol.py`` starts the next one)."""
        self.server_state.total_requests += 1

    def eof_received(self) -> None:
        """A half-closed client still gets its answers (the transport closes after them)."""

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    def _prefix(self) -> str:
        client = self.client
        return f"{client[0]}:{client[1]} - " if client else ""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        """Keep the header lower-cased, without the trailing whitespace llhttp leaves on the value."""
        name = name.lower()
        if value and value[-1] in (32, 9):  # SP or HT at the end (seldom): only then a method call
            value = value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def _begin_cycle(self, http_version: str) -> None:
        """Complete the scope and start the request's cycle (queued behind one still answering)."""
        parser = self.parser
        scope = self.scope
        scope["method"] = parser.get_method().decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        if parser.should_upgrade() and self._should_upgrade():
            return  # ws_upgrade.py parses the URL
        url = parse_url(self.url)
        raw_path: bytes = url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        root = self.root_path
        scope["path"] = root + path if root else path
        scope["raw_path"] = root.encode("ascii") + raw_path if root else raw_path
        query: bytes | None = getattr(url, "query")  # noqa: B009 (None when absent; the stub says bytes)
        scope["query_string"] = query or b""
        app = self.app
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        existing = self.cycle
        self.cycle = cycle = RequestCycle(
            scope,
            self.transport,
            self.flow,
            self.logger,
            self.access_logger,
            self.access_log,
            self.server_state.default_headers,
            MessageEvent(self.loop),
            self.expect_100_continue,
            http_version != "1.0" and parser.should_keep_alive(),
            self.on_response_complete,
        )
        if existing is None or existing.response_complete:
            self._start_asgi_task(cycle, app)
        else:  # pipelined: it starts when the one before it has been answered
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, app))

    def _upgrade(self) -> bytes | None:
        """Return the ``Upgrade`` header's value (lower-cased) when ``Connection`` names it, else None."""
        tokens: list[bytes] = []
        upgrade = None
        for name, value in self.headers:
            if name == b"connection":
                tokens = [token.lower().strip() for token in value.split(b",")]
            elif name == b"upgrade":
                upgrade = value.lower()
        return upgrade if b"upgrade" in tokens else None

    def _should_upgrade(self) -> bool:
        return self._upgrade() == b"websocket" and self.ws_protocol_class is not None

    def _unsupported_upgrade_warning(self) -> None:
        self.logger.warning("Unsupported upgrade request.")
        if self.ws_protocol_class is None:
            self.logger.warning("No supported WebSocket library detected: install 'websockets' or 'wsproto'.")

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()
