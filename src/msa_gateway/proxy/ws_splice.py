"""The two TCP connections of a proxied WebSocket, spliced: bytes go through as they arrive.

After the instance's 101 every chunk read on one side is written to the other at once (no task
hop, no copy, no frame parsing beyond the headers ``ws_frames.FrameCursor`` skips), with flow
control: a side whose write buffer is full pauses reading on the other. Close frames go
through untouched, so the close handshake is the peers' own. The gateway ends a connection
itself only when one side vanishes without a close frame (the instance: the client gets 1014;
the client: the instance gets 1001), after ``idle_timeout`` without a byte (1000 "idle
timeout") and at drain (1001): a close frame is put between two frames, then both TCP
connections are closed once the peers answer, or after ``CLOSE_GRACE`` seconds.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools

from msa_gateway.proxy.ws_frames import FrameCursor, close_frame

CLOSE_GRACE = 2.0  # seconds the peers get to answer a close frame the gateway sent
MAX_REFUSAL = 64 * 1024  # bytes of a refusing instance's body relayed (more: 502)


class Splice:
    """One spliced connection: both transports, the frame cursors and what went through."""

    __slots__ = (
        "_client_gone",
        "_timer",
        "_upstream_gone",
        "bytes_in",
        "bytes_out",
        "client",
        "closing",
        "done",
        "down",
        "ended",
        "idle",
        "last",
        "loop",
        "up",
        "upstream",
    )

    def __init__(self, client: asyncio.Transport, upstream: asyncio.Transport, idle: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.client = client
        self.upstream = upstream
        self.idle = idle
        self.up = FrameCursor()  # client -> instance
        self.down = FrameCursor()  # instance -> client
        self.bytes_in = 0
        self.bytes_out = 0
        self.last = self.loop.time()
        self.closing = False
        self.ended: str | None = None  # why the gateway ended it, for the access line
        self.done: asyncio.Future[None] = self.loop.create_future()
        self._client_gone = self._upstream_gone = False
        self._timer = self.loop.call_later(idle, self._idle_check)

    # --- bytes ------------------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        """Relay a chunk from the client (after a gateway close: only watch for the client's answer)."""
        self.last = self.loop.time()
        self.bytes_in += len(data)
        self.up.feed(data)
        if not self.closing:
            self.upstream.write(data)
        elif self.up.saw_close:
            self.client.close()

    def from_upstream(self, data: bytes) -> None:
        """Relay a chunk from the instance."""
        self.last = self.loop.time()
        self.down.feed(data)
        if not self.closing:
            self.bytes_out += len(data)
            self.client.write(data)

    # --- ends -------------------------------------------------------------------------

    def client_lost(self) -> None:
        """The client's TCP connection ended: close the instance's, with 1001 if no close went by."""
        self._client_gone = True
        if not self._upstream_gone:
            self._pass_on(
                self.upstream, self.up, "client_gone", close_frame(1001, "client went away", masked=True)
            )
        self._check_done()

    def upstream_lost(self) -> None:
        """The instance's TCP connection ended: close the client's, with 1014 if no close went by."""
        self._upstream_gone = True
        if not self._client_gone:
            self._pass_on(
                self.client,
                self.down,
                "upstream_gone",
                close_frame(1014, "the instance went away", masked=False),
            )
        self._check_done()

    def _pass_on(self, other: asyncio.Transport, cursor: FrameCursor, why: str, frame: bytes) -> None:
        """One side ended: close the other, after ``frame`` when no close frame went its way."""
        if not self.closing and not cursor.saw_close:
            self.ended = why
            if cursor.at_boundary:
                other.write(frame)
        other.close()

    def close(self, code: int, reason: str) -> None:
        """End the connection from the gateway: a close frame each way, then TCP after the answers."""
        if self.closing or self.done.done():
            return
        self.closing = True
        self.ended = reason
        for transport, cursor, masked in ((self.client, self.down, False), (self.upstream, self.up, True)):
            if cursor.at_boundary and not cursor.saw_close:
                transport.write(close_frame(code, reason, masked=masked))
            else:
                transport.close()
        self._timer.cancel()
        self._timer = self.loop.call_later(CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        self.client.abort()
        self.upstream.abort()

    def _idle_check(self) -> None:
        left = self.last + self.idle - self.loop.time()
        if left > 0:
            self._timer = self.loop.call_later(left, self._idle_check)
        else:
            self.close(1000, "idle timeout")

    def _check_done(self) -> None:
        if self._client_gone and self._upstream_gone and not self.done.done():
            self._timer.cancel()
            self.done.set_result(None)


class UpstreamAnswer:
    """The instance's answer to the upgrade: status, headers, body (after a 101: the bytes that followed)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class UpstreamLink(asyncio.Protocol):
    """The gateway's TCP connection to the instance: reads the answer to the upgrade, then relays."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.splice: Splice | None = None
        self.answer: asyncio.Future[UpstreamAnswer] = asyncio.get_running_loop().create_future()
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._body = bytearray()
        self._complete = False

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self._complete = True

    # asyncio.Protocol
    def connection_made(self, transport: Any) -> None:
        """Keep the transport."""
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        """Parse the answer; once spliced, relay."""
        if self.splice is not None:
            self.splice.from_upstream(data)
            return
        if self.answer.done():
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = int(exc.args[0]) if exc.args else len(data)
            self._finish(data[offset:])
            return
        except httptools.HttpParserError as exc:
            self.answer.set_exception(ConnectionError(f"invalid answer to the upgrade: {exc}"))
            return
        if len(self._body) > MAX_REFUSAL:
            self.answer.set_exception(ConnectionError("the instance's refusal is too large"))
        elif self._complete:
            self._finish(bytes(self._body))

    def _finish(self, body: bytes) -> None:
        status = self._parser.get_status_code()
        self.answer.set_result(UpstreamAnswer(status, self._headers, body))

    def connection_lost(self, exc: Exception | None) -> None:
        """Before the answer: the upgrade failed; after the splice: tell it."""
        if self.splice is not None:
            self.splice.upstream_lost()
        elif not self.answer.done():
            self.answer.set_exception(ConnectionError("the instance closed the connection before answering"))

    def pause_writing(self) -> None:
        """The instance reads slowly: stop reading the client."""
        if self.splice is not None:
            self.splice.client.pause_reading()

    def resume_writing(self) -> None:
        """The instance caught up: read the client again."""
        if self.splice is not None:
            self.splice.client.resume_reading()
