"""One keep-alive HTTP/1.1 connection to an instance: an asyncio ``Protocol`` parsing with llhttp.

The connection knows nothing about pools or retries; ``proxy/native.py`` drives it. One exchange
at a time: ``start()`` resets the per-exchange state, the caller writes the request through
``write`` (held to the end of the loop's turn while enough requests are in flight:
``write_batch``), and the protocol callbacks fill in the response as bytes arrive:

- the head is parsed strictly by ``httptools.HttpResponseParser`` (llhttp without leniencies:
  garbage, bad chunk sizes, duplicate or conflicting Content-Length are errors; so is a
  ``Transfer-Encoding`` other than one ``chunked``, see ``plain_framing``), capped at
  ``MAX_HEAD`` bytes and ``MAX_HEADERS`` fields; 1xx interim responses are skipped;
- body bytes are queued as they arrive; more than ``HIGH_WATER`` unread bytes pause reading the
  socket until the reader has taken enough of them;
- a response to HEAD ends with its head (llhttp cannot be told the request was HEAD through
  httptools, so its head is cut out of the stream and fed alone); 204/304/1xx have no body (llhttp);
- a response framed neither by Content-Length nor by chunked encoding ends when the peer closes.

Every event (head, body bytes, end, loss, timeout, writable again) wakes the one ``waiter``
future, once per read for all the read brought; the awaiting code re-checks the state. Nothing
here raises into the event loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from msa_gateway.write_batch import DIRECT, WriteBatch

if TYPE_CHECKING:
    from msa_gateway.proxy.native_pool import Pool

Headers = list[tuple[bytes, bytes]]

MAX_HEAD = 64 * 1024
MAX_HEADERS = 100
HIGH_WATER = 256 * 1024
COALESCE_BELOW = 64 * 1024  # smaller queued pieces are joined into one read
LAST_CHUNK = b"0\r\n\r\n"
CHUNKED_HEADER = b"Transfer-Encoding: chunked\r\n"
_CRLF = b"\r\n"
_STATUS_LINE_ALLOWANCE = 16  # "HTTP/1.1 200 " + CRLF around the reason phrase
_EARLY = 0.001  # a timer may fire this much before its deadline (the loop's clock counts milliseconds)


class InvalidHead(ValueError):
    """The request head would not be valid HTTP/1.1 (CR/LF in a field, space in the target)."""


def serialize_head(method: str, target: str, headers: Headers, chunked: bool) -> bytes:
    """Return ``METHOD target HTTP/1.1`` CRLF, the headers as given, TE chunked if asked, CRLF."""
    if " " in target:
        raise InvalidHead("space in the request target")
    out = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1")]
    for name, value in headers:  # a compiled loop: cheaper than joining each pair in C
        out.append(name)
        out.append(b": ")
        out.append(value)
        out.append(b"\r\n")
    if chunked:
        out.append(CHUNKED_HEADER)
    out.append(b"\r\n")
    head = b"".join(out)
    # Every line ends in exactly one CRLF: a stray CR or LF in any field would add one. (One
    # ``translate`` deleting both is a single pass; two ``count`` calls were two.)
    lines = len(headers) + 2 + chunked
    if len(head.translate(None, _CRLF)) != len(head) - 2 * lines:
        raise InvalidHead("CR or LF inside the request line or a header field")
    return head


def frame_chunk(data: bytes) -> bytes:
    """Return ``data`` framed as one chunk of a chunked body (never call it with ``b""``)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def is_framed(headers: Headers) -> bool:
    """Return whether a response head delimits its body (Content-Length or chunked last)."""
    for name, value in headers:
        lname = name.lower()
        if lname == b"content-length":
            return True
        if lname == b"transfer-encoding" and value.rsplit(b",", 1)[-1].strip().lower() == b"chunked":
            return True
    return False


def plain_framing(headers: Headers) -> bool:
    """Return False for a ``Transfer-Encoding`` that is not one plain ``chunked`` line.

    Another coding (``gzip, chunked``) would be dropped with the hop-by-hop header, leaving the
    client a body it cannot decode: such a response is invalid (502), as nginx answers.
    """
    seen = False
    for name, value in headers:
        if len(name) == 17 and name.lower() == b"transfer-encoding":
            if seen or value.strip(b" \t").lower() != b"chunked":
                return False
            seen = True
    return True


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an exchange failed: an ``UpstreamError`` kind and a detail without any address."""

    kind: str
    detail: str
    timeout: bool = False


BAD_RESPONSE = Failure("protocol_error", "the service sent an invalid response")
HEAD_TOO_LARGE = Failure("protocol_error", "the service sent a response head that is too large")
UPGRADE = Failure("protocol_error", "the service switched protocols, which is not supported")
INCOMPLETE_HEAD = Failure("protocol_error", "the service closed the connection inside the response head")
TRUNCATED = Failure("protocol_error", "the service closed the connection before the end of the body")
RESET_MID_BODY = Failure("reset", "the connection was reset before the end of the body")
LOST = Failure("reset", "the service closed the connection without answering")
ABORTED = Failure("reset", "the response was closed")
TIMED_OUT = Failure("read_timeout", "the service did not answer in time", timeout=True)


class _Stop(Exception):
    """Raised from a parser callback to stop parsing."""


class Conn(asyncio.Protocol):
    """One connection; state of the current exchange lives in plain attributes (see module doc)."""

    __slots__ = (
        "buffered",
        "busy",
        "chunks",
        "closed",
        "deadline",
        "done",
        "failure",
        "got_bytes",
        "head_buf",
        "head_done",
        "head_fed",
        "head_req",
        "head_size",
        "headers",
        "idle_since",
        "keep",
        "keep_alive",
        "loop",
        "parser",
        "paused_reading",
        "paused_writing",
        "pool",
        "read_timeout",
        "status",
        "timer",
        "transport",
        "waiter",
        "writes",
        "written",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, pool: Pool | None = None, writes: WriteBatch = DIRECT
    ) -> None:
        self.loop = loop
        self.pool = pool
        self.writes = writes
        self.transport: Any = None
        self.parser = HttpResponseParser(self)
        self.closed = False
        self.busy = True
        self.paused_writing = False
        self.paused_reading = False
        self.waiter: asyncio.Future[None] | None = None
        self.deadline = 0.0  # loop time by which the current wait ends in a timeout; 0.0: none
        self.timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0
        self.chunks: deque[bytes] = deque()
        self.head_buf = bytearray()
        self.read_timeout: float | None = None
        self.start(False, None)
        self.done = True  # no exchange yet: any byte the server sends first makes it unusable

    # --- the exchange, driven by proxy/native.py ---------------------------------------------

    def start(self, head_req: bool, read_timeout: float | None) -> None:
        """Reset the per-exchange state before writing a request (``head_req``: method is HEAD)."""
        self.head_req = head_req
        self.read_timeout = read_timeout
        self.status = 0
        self.headers: Headers = []
        self.head_size = 0
        self.head_fed = 0
        self.head_done = False
        self.done = False
        self.keep = True
        self.keep_alive = False
        self.failure: Failure | None = None
        self.got_bytes = False
        self.written = False
        self.buffered = 0
        if self.chunks:
            self.chunks.clear()

    def write(self, data: bytes) -> None:
        """Hand ``data`` to the transport (maybe at the end of the turn: ``write_batch``); mark it sent."""
        self.written = True
        self.writes.write(self.transport, data)

    async def wait(self) -> None:
        """Wait for the next event, at most ``read_timeout`` (then ``failure`` is ``TIMED_OUT``).

        One timer per connection, not one per wait: a wait sets its deadline and arms the timer
        only when none is pending; a timer that finds a later deadline re-arms for it.
        """
        loop = self.loop
        fut = self.waiter = loop.create_future()
        timeout = self.read_timeout
        if timeout:
            self.deadline = deadline = loop.time() + timeout
            if self.timer is None:
                self.timer = loop.call_at(deadline, self._on_timer)
        try:
            await fut
        finally:
            self.waiter = None
            self.deadline = 0.0

    def take(self) -> bytes:
        """Return the oldest queued body bytes: one big piece, or every small piece joined.

        Reading the socket resumes once no more than ``HIGH_WATER`` bytes wait.
        """
        chunks = self.chunks
        data = chunks.popleft()
        if chunks and len(data) < COALESCE_BELOW:
            data = b"".join([data, *chunks])
            chunks.clear()
        self.buffered -= len(data)
        if self.paused_reading and self.buffered <= HIGH_WATER:
            self.paused_reading = False
            if not self.closed:
                self.transport.resume_reading()
        return data

    def fail(self, failure: Failure) -> None:
        """Record ``failure`` for the exchange (first one wins), abort the socket, wake the waiter."""
        if self.failure is None and not self.done:
            self.failure = failure
        self.keep = False
        self.abort()
        self._wake()

    def abort(self) -> None:
        """Close the socket now (``connection_lost`` follows)."""
        self.keep = False
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def reusable(self) -> bool:
        """Return whether the connection may carry another request: the response was read whole."""
        return (
            self.done
            and self.keep
            and self.keep_alive
            and not self.closed
            and self.failure is None
            and not self.chunks
        )

    # --- asyncio protocol callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        """Feed the parser (or cut a HEAD response's head out); anything unexpected closes."""
        self.got_bytes = True
        if self.done or not self.busy:
            # Nothing may arrive between responses; a late 408 or garbage makes the connection unusable.
            self.keep = False
            self.abort()
            return
        if self.head_req:
            self._head_data(data)
            return
        if self.head_done:
            self._feed(data)
            return
        self.head_fed += len(data)
        self._feed(data)
        if not self.head_done and self.head_fed > MAX_HEAD:
            self.fail(HEAD_TOO_LARGE)

    def eof_received(self) -> bool | None:
        """Let the transport close; ``connection_lost`` settles the exchange."""
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """Settle the exchange: an unframed body ends here, anything else unfinished failed."""
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.busy:
            if self.pool is not None:
                self.pool.lost_idle(self)
            return
        if not self.done and self.failure is None:
            if not self.head_done:
                self.failure = INCOMPLETE_HEAD if self.got_bytes else LOST
            elif exc is None and not self.head_req and not is_framed(self.headers):
                self.done = True  # read until close: the close is the end
                self.keep_alive = False
            else:
                self.failure = TRUNCATED if exc is None else RESET_MID_BODY
        self._wake()

    def pause_writing(self) -> None:
        """Stop sending body bytes until ``resume_writing``."""
        self.paused_writing = True

    def resume_writing(self) -> None:
        """Sending may go on."""
        self.paused_writing = False
        self._wake()

    # --- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        """Refuse a second response after the final one (nothing was asked for)."""
        if self.done:
            raise _Stop

    def on_status(self, reason: bytes) -> None:
        """Count the reason phrase towards the head size."""
        self.head_size += len(reason)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Keep one header field (trailers are dropped; the caps are checked when the head ends)."""
        if not self.head_done:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        """Keep the final head within the caps; forget a 1xx interim head."""
        headers = self.headers
        # head_fed bounds the head from above (it may count body bytes): add up only when it might be big.
        if len(headers) > MAX_HEADERS or (self.head_fed > MAX_HEAD and self._head_size() > MAX_HEAD):
            self.head_size = MAX_HEAD + 1
            raise _Stop
        status = self.parser.get_status_code()
        if status < 200:
            self.headers = []
            return
        if not plain_framing(headers):
            raise _Stop
        self.status = status
        self.head_done = True  # the waiter is woken once the bytes at hand are parsed (``_feed``)

    def on_body(self, data: bytes) -> None:
        """Queue body bytes; pause reading above ``HIGH_WATER`` unread bytes."""
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > HIGH_WATER and not self.paused_reading:
            self.paused_reading = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        """Mark the final response complete (a 1xx completing is skipped)."""
        if not self.head_done:
            return
        self.done = True
        self.keep_alive = self.parser.should_keep_alive()

    # --- internals ---------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        """Parse ``data``; wake the waiter once for all it brought (head, body bytes, the end)."""
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade:
            self.fail(UPGRADE)
        except HttpParserError:
            if self.done:
                self.keep = False  # bytes after the final response
                self.abort()
            elif self.head_size > MAX_HEAD:
                self.fail(HEAD_TOO_LARGE)
            else:
                self.fail(BAD_RESPONSE)
        if self.head_done:  # before the final head nothing is awaited but the head
            self._wake()

    def _head_data(self, data: bytes) -> None:
        """Feed a HEAD response's heads one by one, never a byte past the final head."""
        buf = self.head_buf
        buf += data
        while not self.head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self.fail(HEAD_TOO_LARGE)
                return
            head = bytes(buf[: end + 4])
            del buf[: end + 4]
            self.head_fed += len(head)
            self._feed(head)
            if self.failure is not None:
                return
        self.keep_alive = self.parser.should_keep_alive()
        self.done = True
        if buf:
            self.keep = False  # a body after a HEAD response
            buf.clear()
        # The parser still waits for the body the head announced: start a fresh one. (The waiter
        # was woken by ``_feed`` with the final head; it reads ``done`` when it runs.)
        self.parser = HttpResponseParser(self)

    def _head_size(self) -> int:
        fields = sum(len(name) + len(value) + 4 for name, value in self.headers)
        return self.head_size + fields + _STATUS_LINE_ALLOWANCE

    def _on_timer(self) -> None:
        self.timer = None
        waiter, deadline = self.waiter, self.deadline
        if waiter is None or waiter.done() or not deadline:
            return  # no wait in progress, its event came in this loop turn, or it has no timeout
        if self.loop.time() < deadline - _EARLY:  # a later wait began since the timer was armed
            self.timer = self.loop.call_at(deadline, self._on_timer)
        else:
            self.fail(TIMED_OUT)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
