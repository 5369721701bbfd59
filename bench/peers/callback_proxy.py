"""The ``callback-proxy`` peer: the least a Python reverse proxy can do, in parser callbacks, with no task.

Not a product and not off the shelf: a measuring stick. uvloop's transports and two httptools parsers, one
per side; a request complete in the client's parser callbacks is written at once on an idle upstream
connection (round robin over ``BENCH_UPSTREAMS``, keep-alive, opened on demand), and the upstream's
answer, complete in its parser's callbacks, is written back: no asyncio task, no ASGI message, no
framework, and nothing else either (no limits, timeouts, retries, metrics, logs or streaming: both
bodies are held whole, which the benchmark's 1 KiB bodies allow; no HEAD, whose answer's parser would
wait for a body). Hop-by-hop headers are dropped both ways and ``x-forwarded-for`` is added, as every
proxy in the table does.

So its CPU per request is what two HTTP exchanges cost in Python on this host, protocol code included,
the way ``bare-asgi`` is what one exchange costs through uvicorn and ASGI. A gateway that is many times
this one's cost spends the difference in its own layers (server, ASGI, per-request objects), not in the
language or the kernel. ``python -m bench.peers.callback_proxy --port N``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
from collections import deque
from http import HTTPStatus
from typing import Any

import httptools
import uvloop

from bench.peers import UPSTREAMS_ENV

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
FRAMING = frozenset({b"content-length"})  # recomputed from the body held whole
STATUS_LINES = {s.value: b"HTTP/1.1 %d %b\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
BODYLESS = (b"GET", b"HEAD", b"DELETE", b"OPTIONS")  # no Content-Length when such a request has no body
BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def parse_backends(value: str) -> list[tuple[str, int]]:
    """Turn ``host:port,host:port`` into addresses; fail naming the variable when empty or malformed."""
    out = []
    for item in (v.strip() for v in value.split(",")):
        host, sep, port = item.rpartition(":")
        if not item or not sep or not host or not port.isdigit():
            raise SystemExit(f"{UPSTREAMS_ENV} needs host:port[,host:port...], got {value!r}")
        out.append((host, int(port)))
    return out


def request_head(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], client: bytes) -> bytes:
    """Return the upstream request's head: the client's headers minus hop-by-hop and framing ones."""
    lines = [b"%s %s HTTP/1.1\r\n" % (method, target)]
    lines.extend(b"%s: %s\r\n" % (n, v) for n, v in headers if n not in HOP_BY_HOP and n not in FRAMING)
    lines.append(b"x-forwarded-for: %s\r\n" % client)
    return b"".join(lines)


def framed(head: bytes, body: bytes, length: bool = True) -> bytes:
    """Return ``head`` (its lines, without the blank one), a Content-Length for ``body`` unless
    ``length`` is false and there is no body, the blank line and the body."""
    if not body and not length:
        return head + b"\r\n"
    return b"%scontent-length: %d\r\n\r\n%b" % (head, len(body), body)


def status_line(status: int) -> bytes:
    """Return the response's status line (a code ``http.HTTPStatus`` does not know keeps an empty reason)."""
    return STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status


class Backend:
    """One backend's idle upstream connections and the exchanges waiting for one."""

    def __init__(self, loop: asyncio.AbstractEventLoop, address: tuple[str, int]) -> None:
        self.loop = loop
        self.address = address
        self.idle: list[Upstream] = []
        self.waiting: deque[Client] = deque()
        self.opening: set[asyncio.Task[None]] = set()  # held so that a connect in flight is not collected

    def send(self, client: Client) -> None:
        """Send ``client``'s request on an idle connection, or on a new one when none is idle."""
        if self.idle:
            self.idle.pop().send(client)
            return
        self.waiting.append(client)
        task = self.loop.create_task(self._open(), name="callback-proxy-connect")
        self.opening.add(task)
        task.add_done_callback(self.opening.discard)

    async def _open(self) -> None:
        try:
            await self.loop.create_connection(lambda: Upstream(self), *self.address)
        except OSError:
            if self.waiting:
                self.waiting.popleft().answer(BAD_GATEWAY)

    def ready(self, upstream: Upstream) -> None:
        """Take an idle connection: the next waiting request goes out on it."""
        if self.waiting:
            upstream.send(self.waiting.popleft())
        else:
            self.idle.append(upstream)


class Upstream(asyncio.Protocol):
    """One keep-alive connection to a backend, carrying one exchange at a time."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.parser = httptools.HttpResponseParser(self)
        self.transport: Any = None
        self.client: Client | None = None
        self.head: list[bytes] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.backend.ready(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.backend.idle:
            self.backend.idle.remove(self)
        client, self.client = self.client, None
        if client is not None:
            client.answer(BAD_GATEWAY)

    def send(self, client: Client) -> None:
        self.client = client
        self.transport.write(client.upstream_request())

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_begin(self) -> None:
        self.head, self.body = [], []

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name not in HOP_BY_HOP and name not in FRAMING:
            self.head.append(b"%s: %s\r\n" % (name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        status = self.parser.get_status_code()
        head = status_line(status) + b"".join(self.head)
        response = framed(head, b"".join(self.body), status >= 200 and status not in (204, 304))
        if client is not None:
            client.answer(response)
        if self.parser.should_keep_alive():
            self.backend.ready(self)
        else:
            self.transport.close()


class Client(asyncio.Protocol):
    """One client connection; its requests go upstream one at a time, answered in order."""

    def __init__(self, backends: itertools.cycle[Backend]) -> None:
        self.backends = backends
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.address = b""
        self.queue: deque[bytes] = deque()  # requests not answered yet, oldest (the one upstream) first
        self.busy = False
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.address = str(transport.get_extra_info("peername")[0]).encode()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", [], []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        head = request_head(method, self.url, self.headers, self.address)
        self.queue.append(framed(head, b"".join(self.body), method not in BODYLESS))
        if not self.busy:
            self._next()

    def _next(self) -> None:
        if self.queue:
            self.busy = True
            next(self.backends).send(self)

    def upstream_request(self) -> bytes:
        return self.queue[0]

    def answer(self, response: bytes) -> None:
        """Write the answer to the oldest request and send the next one."""
        self.queue.popleft()
        self.busy = False
        if not self.transport.is_closing():
            self.transport.write(response)
        self._next()


def main(argv: list[str] | None = None) -> None:
    """Serve on 127.0.0.1:``--port`` until interrupted, forwarding to ``BENCH_UPSTREAMS``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    addresses = parse_backends(os.environ.get(UPSTREAMS_ENV, ""))
    loop = uvloop.new_event_loop()
    backends = itertools.cycle([Backend(loop, a) for a in addresses])
    loop.run_until_complete(loop.create_server(lambda: Client(backends), args.host, args.port))
    with contextlib.suppress(KeyboardInterrupt):
        loop.run_forever()


if __name__ == "__main__":
    main()
