"""An in-test HTTP/1.1 server that records requests byte for byte and answers as told.

``Recorder`` keeps, for every request, the raw request line, the raw header list (order and
duplicates kept), the de-framed body (Content-Length or chunked) and the peer. It answers with a
``Reply``: status, raw header list, body as bytes or an async iterator of chunks, or a fault
(close, reset, hang, garbage, truncated body, slow answer)::

    async with Recorder(Reply(200, body=b"hi")) as rec:
        ...  # send something to rec.url
        req = await rec.next_request()
        assert req.target == b"/a%2Fb?x=1"

``RecorderThread`` runs one on its own loop in a background thread for synchronous callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import http
import socket
import struct
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence

import orjson

MAX_HEAD = 64 * 1024

Header = tuple[bytes, bytes]
HeaderLike = tuple[str | bytes, str | bytes]


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """One request exactly as it arrived (body de-framed; framing kept in ``chunked``/``chunks``)."""

    request_line: bytes
    method: bytes
    target: bytes
    version: bytes
    headers: tuple[Header, ...]
    raw_head: bytes
    body: bytes
    chunked: bool
    chunks: tuple[bytes, ...]
    trailers: tuple[Header, ...]
    peer: tuple[str, int]
    connection: int
    index: int
    started: float
    finished: float

    def header_values(self, name: str | bytes) -> list[bytes]:
        """Return every value of header ``name`` (case-insensitive), in arrival order."""
        key = _b(name).lower()
        return [v for k, v in self.headers if k.lower() == key]

    def header(self, name: str | bytes) -> bytes | None:
        """Return the first value of header ``name`` or None."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_names(self) -> list[bytes]:
        """Return the header names as sent (original case), in order."""
        return [k for k, _ in self.headers]


class Action(enum.Enum):
    """What to do with the connection instead of answering normally."""

    RESPOND = "respond"
    CLOSE = "close"  # close (FIN) without answering
    RESET = "reset"  # reset (RST via SO_LINGER 0) without answering
    HANG = "hang"  # never answer; keep the connection until the peer goes away


@dataclasses.dataclass(frozen=True)
class Reply:
    """A programmed answer.

    ``headers`` are sent as given; Content-Length or ``Transfer-Encoding: chunked`` is added when
    neither is present (chunked for an iterator body). ``delay`` waits before acting. ``raw`` is
    written verbatim instead of a response. ``truncate`` sends only that many body bytes and closes.
    """

    status: int = 200
    headers: Sequence[HeaderLike] = ()
    body: bytes | AsyncIterable[bytes] = b""
    reason: str | None = None
    action: Action = Action.RESPOND
    delay: float = 0.0
    raw: bytes | None = None
    truncate: int | None = None
    close: bool = False

    @classmethod
    def json(cls, obj: object, status: int = 200, headers: Sequence[HeaderLike] = ()) -> Reply:
        """Answer ``obj`` as JSON."""
        return cls(status, [("Content-Type", "application/json"), *headers], orjson.dumps(obj))

    @classmethod
    def closing(cls, delay: float = 0.0) -> Reply:
        """Close the connection without answering."""
        return cls(action=Action.CLOSE, delay=delay)

    @classmethod
    def resetting(cls, delay: float = 0.0) -> Reply:
        """Reset the connection without answering."""
        return cls(action=Action.RESET, delay=delay)

    @classmethod
    def hanging(cls) -> Reply:
        """Never answer."""
        return cls(action=Action.HANG)

    @classmethod
    def garbage(cls, data: bytes = b"\x00\xffTHIS IS NOT HTTP\r\n\r\n") -> Reply:
        """Send bytes that are not an HTTP response, then close."""
        return cls(raw=data)

    @classmethod
    def truncated(cls, body: bytes, sent: int, status: int = 200) -> Reply:
        """Announce ``len(body)`` bytes, send only the first ``sent``, then close."""
        return cls(status, body=body, truncate=sent)


Handler = Callable[[RecordedRequest], Awaitable[Reply]]


async def stream(parts: Iterable[bytes], delay: float = 0.0) -> AsyncIterator[bytes]:
    """Yield ``parts`` one by one, sleeping ``delay`` seconds before each part but the first."""
    for i, part in enumerate(parts):
        if i and delay:
            await asyncio.sleep(delay)
        yield part


def always(reply: Reply) -> Handler:
    """Return a handler answering ``reply`` to every request."""

    async def handler(_: RecordedRequest) -> Reply:
        return reply

    return handler


def in_order(*replies: Reply) -> Handler:
    """Return a handler answering ``replies`` in turn, repeating the last one."""
    if not replies:
        raise ValueError("in_order needs at least one reply")
    answered = [0]

    async def handler(_: RecordedRequest) -> Reply:
        i = min(answered[0], len(replies) - 1)
        answered[0] += 1
        return replies[i]

    return handler


class BadRequestError(ValueError):
    """The peer sent something the recorder cannot parse as an HTTP/1.1 request."""


def _parse_fields(lines: Iterable[bytes]) -> tuple[Header, ...]:
    fields = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise BadRequestError(f"bad header line {line!r}")
        fields.append((name, value.strip(b" \t")))
    return tuple(fields)


def _wants_keep_alive(req: RecordedRequest) -> bool:
    tokens = {t.strip().lower() for v in req.header_values("connection") for t in v.split(b",")}
    if req.version == b"HTTP/1.1":
        return b"close" not in tokens
    return False


class Recorder:
    """Record every request received on 127.0.0.1:``port`` and answer through the current handler."""

    def __init__(
        self, handler: Handler | Reply | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.host = host
        self.port = port
        self.requests: list[RecordedRequest] = []
        self.errors: list[BaseException] = []
        self.connections = 0
        self.open_connections = 0
        self._handler: Handler = always(Reply(body=b"ok"))
        if handler is not None:
            self.respond(handler)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._arrived = asyncio.Condition()
        self._cursor = 0

    @property
    def url(self) -> str:
        """Return ``http://host:port``."""
        return f"http://{self.host}:{self.port}"

    def respond(self, handler: Handler | Reply) -> None:
        """Answer every following request with ``handler`` (or always with the given ``Reply``)."""
        self._handler = always(handler) if isinstance(handler, Reply) else handler

    async def start(self) -> Recorder:
        """Start listening; ``port`` 0 picks a free port."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_HEAD)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        """Stop listening, drop every open connection and wait for their tasks."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Recorder:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def next_request(self, timeout: float = 5.0) -> RecordedRequest:
        """Return the oldest request not yet returned by this method, waiting up to ``timeout``."""
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.requests) > self._cursor), timeout)
            self._cursor += 1
            return self.requests[self._cursor - 1]

    async def wait_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Wait until at least ``count`` requests were recorded in total; return them all."""
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.requests) >= count), timeout)
        return list(self.requests)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        task = asyncio.current_task()
        assert task is not None
        task.set_name(f"recorder-{self.port}-conn-{number}")
        self._tasks.add(task)
        self._writers.add(writer)
        self.open_connections += 1
        peer = writer.get_extra_info("peername")
        try:
            while True:
                req = await self._read_request(reader, writer, number, (str(peer[0]), int(peer[1])))
                if req is None:
                    break
                async with self._arrived:
                    req = dataclasses.replace(req, index=len(self.requests))
                    self.requests.append(req)
                    self._arrived.notify_all()
                if not await self._answer(req, reader, writer):
                    break
        except BadRequestError:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.open_connections -= 1
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _read_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: int, peer: tuple[str, int]
    ) -> RecordedRequest | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return None
        started = time.monotonic()
        line, *header_lines = head[:-4].split(b"\r\n")
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise BadRequestError(f"bad request line {line!r}")
        headers = _parse_fields(header_lines)
        partial = RecordedRequest(
            line, parts[0], parts[1], parts[2], headers, head, b"", False, (), (), peer, conn, 0, started, 0.0
        )
        if (partial.header("expect") or b"").lower() == b"100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        chunks: list[bytes] = []
        trailers: tuple[Header, ...] = ()
        encoding = b",".join(partial.header_values("transfer-encoding")).lower()
        chunked = b"chunked" in encoding
        if chunked:
            trailers = await self._read_chunks(reader, chunks)
            body = b"".join(chunks)
        else:
            length = partial.header("content-length")
            body = await reader.readexactly(int(length)) if length else b""
        return dataclasses.replace(
            partial,
            body=body,
            chunked=chunked,
            chunks=tuple(chunks),
            trailers=trailers,
            finished=time.monotonic(),
        )

    @staticmethod
    async def _read_chunks(reader: asyncio.StreamReader, chunks: list[bytes]) -> tuple[Header, ...]:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise BadRequestError(f"bad chunk size {size_line!r}") from exc
            if size == 0:
                break
            chunks.append(await reader.readexactly(size))
            if await reader.readexactly(2) != b"\r\n":
                raise BadRequestError("chunk not followed by CRLF")
        lines = []
        while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
            lines.append(trailer[:-2])
        return _parse_fields(lines)

    async def _answer(
        self, req: RecordedRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Act on the handler's reply; return whether the connection stays open."""
        try:
            reply = await self._handler(req)
        except Exception as exc:
            self.errors.append(exc)
            reply = Reply(500, body=f"recorder handler failed: {exc!r}".encode(), close=True)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.action is Action.CLOSE:
            return False
        if reply.action is Action.RESET:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if reply.action is Action.HANG:
            while await reader.read(65536):
                pass
            return False
        if reply.raw is not None:
            writer.write(reply.raw)
            await writer.drain()
            return False
        return await self._send(req, reply, writer)

    async def _send(self, req: RecordedRequest, reply: Reply, writer: asyncio.StreamWriter) -> bool:
        headers = [(_b(k), _b(v)) for k, v in reply.headers]
        names = {k.lower() for k, _ in headers}
        bodiless = req.method == b"HEAD" or reply.status in (204, 304) or reply.status < 200
        te = b",".join(v for k, v in headers if k.lower() == b"transfer-encoding").lower()
        chunked = b"chunked" in te
        until_eof = False
        if (
            b"content-length" not in names
            and not te
            and reply.status not in (204, 304)
            and reply.status >= 200
        ):
            if isinstance(reply.body, bytes):
                headers.append((b"Content-Length", str(len(reply.body)).encode()))
            elif req.version == b"HTTP/1.1":
                headers.append((b"Transfer-Encoding", b"chunked"))
                chunked = True
            else:
                until_eof = True
        connection = {
            t.strip().lower() for k, v in headers if k.lower() == b"connection" for t in v.split(b",")
        }
        keep = _wants_keep_alive(req) and not (reply.close or until_eof or reply.truncate is not None)
        keep = keep and b"close" not in connection
        if not keep and b"connection" not in names and reply.truncate is None:
            headers.append((b"Connection", b"close"))
        reason = reply.reason if reply.reason is not None else _reason(reply.status)
        head = [b"HTTP/1.1 %d %s\r\n" % (reply.status, reason.encode("latin-1"))]
        head += [k + b": " + v + b"\r\n" for k, v in headers]
        writer.write(b"".join([*head, b"\r\n"]))
        await writer.drain()
        if bodiless:
            return keep
        body = reply.body
        parts = stream([body] if body else []) if isinstance(body, bytes) else body
        left = reply.truncate
        async for part in parts:
            if not part:
                continue
            data = part if left is None else part[:left]
            if chunked:
                writer.write(b"%x\r\n" % len(part) + data + (b"\r\n" if len(data) == len(part) else b""))
            else:
                writer.write(data)
            await writer.drain()
            if left is not None:
                left -= len(data)
                if left <= 0:
                    return False
        if left is not None:
            return False
        if chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        return keep


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class RecorderThread:
    """A ``Recorder`` on its own event loop in a background thread, driven synchronously."""

    def __init__(self, handler: Handler | Reply | None = None) -> None:
        self._initial = handler
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._recorder: Recorder | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="recorder-thread", daemon=True)

    def start(self, timeout: float = 10.0) -> RecorderThread:
        """Start the thread and return once the recorder listens."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("recorder thread did not start")
        if self._failure is not None:
            raise RuntimeError("recorder thread failed to start") from self._failure
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close the recorder and join the thread."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> RecorderThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def recorder(self) -> Recorder:
        """Return the recorder (touch its async methods only through this class)."""
        if self._recorder is None:
            raise RuntimeError("recorder thread not started")
        return self._recorder

    @property
    def port(self) -> int:
        """Return the listening port."""
        return self.recorder.port

    @property
    def url(self) -> str:
        """Return ``http://127.0.0.1:port``."""
        return self.recorder.url

    @property
    def requests(self) -> list[RecordedRequest]:
        """Return a copy of the requests recorded so far."""
        return list(self.recorder.requests)

    @property
    def connections(self) -> int:
        """Return how many connections were accepted."""
        return self.recorder.connections

    def respond(self, handler: Handler | Reply) -> None:
        """Answer following requests with ``handler`` (it runs on the recorder's loop)."""
        self.recorder.respond(handler)

    def next_request(self, timeout: float = 5.0) -> RecordedRequest:
        """Block until the next unseen request arrives (see ``Recorder.next_request``)."""
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(self.recorder.next_request(timeout), self._loop)
        return fut.result(timeout + 1.0)

    def wait_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until ``count`` requests were recorded in total."""
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(self.recorder.wait_requests(count, timeout), self._loop)
        return fut.result(timeout + 1.0)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self._recorder = await Recorder(self._initial).start()
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            raise
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self._recorder.close()
