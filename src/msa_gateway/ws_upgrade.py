"""The client's side of a WebSocket upgrade: the gateway takes the TCP connection over from uvicorn.

uvicorn would speak WebSocket with the client itself (parse, unmask, join and re-frame every
message, answer pings). The gateway relays the bytes instead, so ``GatewayHttpProtocol`` hands
an upgrade request to ``UpgradedConnection``: it runs the application with a ``websocket``
scope whose ``msa.upgrade`` extension is this connection, and the proxy (``proxy/websocket.py``)
answers with ``respond`` (an HTTP response: a refusal, an error) or splices it to the
instance's connection after writing the 101 (``accept``). The plain ASGI messages work too,
for anything else the application serves: ``websocket.close`` before accepting answers 403 and
``websocket.http.response.*`` is sent as is; ``websocket.accept`` is not supported.

uvicorn counts the connection as open until it ends and calls ``shutdown`` on it at SIGTERM:
a spliced connection gets a 1001 close frame both ways, then closes.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import httptools

if TYPE_CHECKING:
    from msa_gateway.proxy.ws_splice import Splice

log = logging.getLogger("msa_gateway.server")

EXTENSION = "msa.upgrade"
MAX_EARLY = 64 * 1024  # bytes a client may send before the 101 (kept, then relayed)


def response_bytes(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """Return an HTTP/1.1 response with ``Connection: close`` and the body's length."""
    try:
        phrase = HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    lines = [b"HTTP/1.1 %d %s" % (status, phrase)]
    if status == 101:
        lines.extend(b"%s: %s" % (k, v) for k, v in headers)
        return b"\r\n".join(lines) + b"\r\n\r\n"
    lines.extend(b"%s: %s" % (k, v) for k, v in headers if k not in (b"content-length", b"connection"))
    lines.append(b"content-length: %d" % len(body))
    lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class UpgradedConnection(asyncio.Protocol):
    """A client connection that asked to upgrade, from the request head until it closes."""

    def __init__(self, transport: asyncio.Transport, server_state: Any) -> None:
        self.transport = transport
        self.server_state = server_state
        self.splice: Splice | None = None
        self.early = bytearray()  # bytes sent before the 101
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.answered = False
        server_state.connections.add(self)

    # --- what the proxy calls ---------------------------------------------------------

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Answer the upgrade with an HTTP response and close."""
        if not self.answered and not self.lost.done():
            self.answered = True
            self.transport.write(response_bytes(status, headers, body))
            self.transport.close()

    def accept(self, headers: list[tuple[bytes, bytes]], splice: Splice) -> None:
        """Write the 101 and relay from now on (with what the client sent early)."""
        self.answered = True
        self.splice = splice
        self.transport.write(response_bytes(101, headers, b""))
        if self.early:
            early, self.early = bytes(self.early), bytearray()
            splice.from_client(early)
        if self.lost.done():
            splice.client_lost()

    def app_done(self, task: asyncio.Task[None]) -> None:
        """The application ended: log a crash (with the traceback) and close a connection it left open."""
        if not task.cancelled() and task.exception() is not None:
            log.error("websocket application failed", exc_info=task.exception())
        if self.splice is None:
            self.respond(500, [(b"content-type", b"application/json")], b'{"error":"internal_error"}')

    # --- asyncio.Protocol -------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Relay; before the 101 keep the bytes (and stop reading past ``MAX_EARLY``)."""
        if self.splice is not None:
            self.splice.from_client(data)
            return
        self.early += data
        if len(self.early) > MAX_EARLY:
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        """Tell the splice (or the proxy still waiting for the instance)."""
        self.server_state.connections.discard(self)
        if not self.lost.done():
            self.lost.set_result(None)
        if self.splice is not None:
            self.splice.client_lost()

    def pause_writing(self) -> None:
        """The client reads slowly: stop reading the instance."""
        if self.splice is not None:
            self.splice.upstream.pause_reading()

    def resume_writing(self) -> None:
        """The client caught up: read the instance again."""
        if self.splice is not None:
            self.splice.upstream.resume_reading()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown (SIGTERM): close with 1001, or drop a connection not spliced yet."""
        if self.splice is not None:
            self.splice.close(1001, "gateway shutting down")
        elif not self.answered:
            self.respond(503, [(b"content-type", b"application/json")], b'{"error":"shutting_down"}')

    # --- ASGI ---------------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        """Return ``websocket.connect`` first, then ``websocket.disconnect`` when the client goes."""
        if not getattr(self, "_connected", False):
            self._connected = True
            return {"type": "websocket.connect"}
        await asyncio.shield(self.lost)
        return {"type": "websocket.disconnect", "code": 1006}

    async def send(self, message: dict[str, Any]) -> None:
        """Handle what a plain ASGI app sends on a WebSocket scope (refusals only)."""
        kind = message["type"]
        if kind == "websocket.close":
            self.respond(403, [], b"")
        elif kind == "websocket.http.response.start":
            self._start = (
                int(message["status"]),
                [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers", [])],
            )
            self._body = bytearray()
        elif kind == "websocket.http.response.body":
            self._body += message.get("body", b"")
            if not message.get("more_body", False):
                self.respond(*self._start, bytes(self._body))
        else:
            raise RuntimeError(f"{kind!r} is not supported on a relayed WebSocket: the proxy splices it")


def websocket_scope(
    http_scope: dict[str, Any], url: bytes, root_path: str, connection: UpgradedConnection
) -> dict[str, Any]:
    """Return the ``websocket`` scope of an upgrade request from uvicorn's (unfinished) ``http`` scope."""
    parsed = httptools.parse_url(url)
    raw_path = parsed.path
    path = raw_path.decode("ascii")
    if "%" in path:
        path = urllib.parse.unquote(path)
    subprotocols = [
        p.strip().decode("latin-1")
        for name, value in http_scope["headers"]
        if name == b"sec-websocket-protocol"
        for p in value.split(b",")
        if p.strip()
    ]
    scope = {k: v for k, v in http_scope.items() if k != "method"}
    scope.update(
        type="websocket",
        scheme="wss" if http_scope.get("scheme") == "https" else "ws",
        path=root_path + path,
        raw_path=root_path.encode("ascii") + raw_path,
        query_string=parsed.query or b"",
        subprotocols=subprotocols,
        extensions={EXTENSION: {"connection": connection}},
    )
    return scope
