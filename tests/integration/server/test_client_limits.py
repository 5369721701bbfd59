"""Client-side limits of ``GatewayHttpProtocol``: a real uvicorn server on 127.0.0.1, raw sockets.

Each test runs once per event loop implementation (``asyncio`` and ``uvloop``, the one the
gateway runs on): an async scenario is wrapped by ``on_both_loops`` into a synchronous test.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import statistics
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, cast

import orjson
import pytest
import uvicorn
import uvloop

from msa_gateway.protocol import LINGER, ServerLimits, make_protocol
from tests.support.procs import free_port

Scenario = Callable[[], Coroutine[Any, Any, None]]
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
HEAD_TIMEOUT = 1.0
LIMITS = ServerLimits(
    max_request_line=8192, max_header_bytes=32768, max_headers=100, head_timeout=HEAD_TIMEOUT
)
GET = b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n"
SECRET = b"s3cr3t-header-value"


def on_both_loops(scenario: Scenario) -> Callable[[str], None]:
    """Turn an async scenario into a test run once on each event loop implementation."""

    @pytest.mark.parametrize("loop_name", list(LOOPS))
    def test(loop_name: str) -> None:
        with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
            runner.run(asyncio.wait_for(scenario(), 60))

    test.__name__ = scenario.__name__
    test.__doc__ = scenario.__doc__
    return test


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer every request with its path and body length; ``/slow`` waits 1.5 s first."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    if scope["path"] == "/slow":
        await asyncio.sleep(1.5)
    body = orjson.dumps({"path": scope["path"], "body": size})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def serve(limits: ServerLimits = LIMITS, keep_alive: float = 30.0) -> AsyncIterator[int]:
    """Serve ``app`` with the protocol enforcing ``limits`` on a free port; yield the port."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=cast(Any, make_protocol(limits)),  # uvicorn calls it as a class
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=False,
        timeout_keep_alive=keep_alive,  # type: ignore[arg-type]
        backlog=2048,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name="test-limits-server")
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server exited before starting")
            await asyncio.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


class Conn:
    """A raw client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buf = b""

    @classmethod
    async def open(cls, port: int) -> Conn:
        """Connect to 127.0.0.1:``port``."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=4 * 1024 * 1024)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        """Write ``data`` and wait until it is handed to the kernel."""
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, timeout: float = 5.0) -> tuple[int, dict[bytes, bytes], bytes]:
        """Read one response with a Content-Length body."""
        async with asyncio.timeout(timeout):
            while b"\r\n\r\n" not in self.buf:
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise EOFError(f"closed before a response; got {self.buf[:200]!r}")
                self.buf += chunk
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in lines[1:])}
            length = int(headers[b"content-length"])
            while len(rest) < length:
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise EOFError("closed inside a body")
                rest += chunk
            self.buf = rest[length:]
            return int(lines[0].split(b" ")[1]), headers, rest[:length]

    async def closed(self, timeout: float = 5.0) -> bool:
        """Return True when the server closes the connection within ``timeout`` (data is dropped)."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        return True

    def close(self) -> None:
        """Close the client side."""
        self.writer.close()


def assert_error(status: int, headers: dict[bytes, bytes], body: bytes, want: int, error: str) -> None:
    """Check a limit answer: status, JSON body shape, ``Connection: close`` and matching request id."""
    assert status == want, body
    assert headers[b"connection"] == b"close"
    assert headers[b"content-type"] == b"application/json"
    doc = orjson.loads(body)
    assert set(doc) == {"error", "detail", "request_id"}
    assert doc["error"] == error
    assert doc["request_id"] and headers[b"x-request-id"] == doc["request_id"].encode()


async def rejected_by(port: int, data: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """Send ``data`` on a new connection; return the answer after checking the server then closes."""
    conn = await Conn.open(port)
    try:
        with contextlib.suppress(ConnectionError):
            await conn.send(data)
        answer = await conn.response()
        assert await conn.closed(LINGER + 2)
        return answer
    finally:
        conn.close()


async def ok(port: int, data: bytes = GET) -> dict[str, Any]:
    """Send one request on a new connection and return the decoded 200 answer."""
    conn = await Conn.open(port)
    try:
        await conn.send(data)
        status, _, body = await conn.response()
        assert status == 200, body
        doc: dict[str, Any] = orjson.loads(body)
        return doc
    finally:
        conn.close()


def get_with(url: bytes = b"/ok", headers: list[bytes] | None = None) -> bytes:
    """Return a GET request for ``url`` with extra header lines."""
    lines = [b"GET " + url + b" HTTP/1.1", b"Host: t", *(headers or [])]
    return b"\r\n".join(lines) + b"\r\n\r\n"


# --- limits on the head ----------------------------------------------------------------


@on_both_loops
async def test_normal_request_and_keep_alive() -> None:
    """A normal request is served, and the connection serves the next one too."""
    async with serve() as port:
        conn = await Conn.open(port)
        for path in (b"/a", b"/b", b"/c"):
            await conn.send(get_with(path))
            status, headers, body = await conn.response()
            assert status == 200
            assert orjson.loads(body)["path"] == path.decode()
            assert b"connection" not in headers
        assert not await conn.closed(0.3)
        conn.close()


@on_both_loops
async def test_request_target_longer_than_limit_is_414() -> None:
    """A URL one byte over ``max_request_line`` is 414 and closes; one at the limit is served."""
    async with serve() as port:
        at_limit = b"/" + b"a" * (LIMITS.max_request_line - 1)
        assert (await ok(port, get_with(at_limit)))["path"] == at_limit.decode()
        status, headers, body = await rejected_by(port, get_with(at_limit + b"a"))
        assert_error(status, headers, body, 414, "uri_too_long")


@on_both_loops
async def test_long_url_arriving_in_pieces_is_414_before_the_head_ends() -> None:
    """A URL that keeps growing is cut once it passes the limit, without waiting for the head."""
    async with serve() as port:
        conn = await Conn.open(port)
        await conn.send(b"GET /")
        for _ in range(5):
            await conn.send(b"a" * 4096)
        status, headers, body = await conn.response()
        assert_error(status, headers, body, 414, "uri_too_long")
        assert await conn.closed(LINGER + 2)


@on_both_loops
async def test_head_larger_than_limit_is_431() -> None:
    """A head one byte over ``max_header_bytes`` is 431; one at the limit is served."""
    async with serve() as port:
        fill = LIMITS.max_header_bytes - len(get_with(headers=[b"X-Big: "]))
        assert (await ok(port, get_with(headers=[b"X-Big: " + b"v" * fill])))["path"] == "/ok"
        status, headers, body = await rejected_by(port, get_with(headers=[b"X-Big: " + b"v" * (fill + 1)]))
        assert_error(status, headers, body, 431, "headers_too_large")
        assert b"32768 bytes" in body


@on_both_loops
async def test_huge_header_is_431_and_the_answer_is_not_lost() -> None:
    """1 MiB and 16 MiB headers are refused early; the client, still sending, reads the 431 (no reset)."""
    async with serve() as port:
        for size in (1 << 20, 16 << 20):
            status, headers, body = await rejected_by(port, get_with(headers=[b"X-Huge: " + b"v" * size]))
            assert_error(status, headers, body, 431, "headers_too_large")


@on_both_loops
async def test_more_headers_than_limit_is_431() -> None:
    """101 headers (Host + 100) are 431; 100 are served."""
    async with serve() as port:
        lines = [b"X-H%d: v" % i for i in range(LIMITS.max_headers - 1)]
        assert (await ok(port, get_with(headers=lines)))["path"] == "/ok"
        status, headers, body = await rejected_by(port, get_with(headers=[*lines, b"X-One-More: v"]))
        assert_error(status, headers, body, 431, "headers_too_large")
        assert b"more than 100 headers" in body


@on_both_loops
async def test_garbage_is_a_json_400() -> None:
    """What httptools cannot parse is a JSON 400 with ``Connection: close``, like the other answers."""
    async with serve() as port:
        status, headers, body = await rejected_by(port, b"NOT HTTP AT ALL\r\n\r\n")
        assert_error(status, headers, body, 400, "bad_request")


# --- the head deadline -----------------------------------------------------------------


@on_both_loops
async def test_slowloris_is_cut_with_408_at_the_head_deadline() -> None:
    """One byte every 0.2 s: 408 arrives and the connection closes within deadline + 0.5 s."""
    async with serve() as port:
        conn = await Conn.open(port)
        request = get_with(headers=[b"X-Slow: " + b"z" * 200])
        started = time.monotonic()

        async def drip() -> None:
            for i in range(len(request)):
                await conn.send(request[i : i + 1])
                await asyncio.sleep(0.2)

        dripper = asyncio.create_task(drip(), name="slowloris")
        try:
            status, headers, body = await conn.response(timeout=HEAD_TIMEOUT + 0.5)
            answered = time.monotonic() - started
            assert_error(status, headers, body, 408, "request_timeout")
        finally:
            dripper.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await dripper
        assert await conn.closed(HEAD_TIMEOUT + 0.5 - (time.monotonic() - started))
        cut = time.monotonic() - started
        assert HEAD_TIMEOUT - 0.05 <= answered <= cut <= HEAD_TIMEOUT + 0.5
        print(f"slowloris: 408 after {answered:.3f} s, closed after {cut:.3f} s")
        conn.close()


@on_both_loops
async def test_slow_body_after_a_complete_head_is_not_cut() -> None:
    """The deadline covers the head only: a body trickling for longer than it still gets its 200."""
    async with serve() as port:
        conn = await Conn.open(port)
        await conn.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 8\r\n\r\n")
        for _ in range(8):
            await asyncio.sleep(HEAD_TIMEOUT / 5)
            await conn.send(b"x")
        status, _, body = await conn.response()
        assert status == 200 and orjson.loads(body) == {"path": "/up", "body": 8}
        conn.close()


@on_both_loops
async def test_idle_keep_alive_connection_outlives_the_head_deadline() -> None:
    """After a response, an idle connection is governed by keep-alive, not by the head deadline."""
    async with serve(ServerLimits(head_timeout=0.4), keep_alive=1.5) as port:
        conn = await Conn.open(port)
        await conn.send(GET)
        assert (await conn.response())[0] == 200
        assert not await conn.closed(1.0)
        await conn.send(GET)
        assert (await conn.response())[0] == 200
        conn.close()


@on_both_loops
async def test_keep_alive_counts_from_the_last_response_not_the_first() -> None:
    """The connection's one keep-alive timer, armed after the first response, waits for the last."""
    async with serve(keep_alive=1.5) as port:
        conn = await Conn.open(port)
        await conn.send(GET)
        assert (await conn.response())[0] == 200
        assert not await conn.closed(0.75)
        await conn.send(GET)
        assert (await conn.response())[0] == 200
        last = time.monotonic()
        assert not await conn.closed(1.0)  # past the first response's deadline: the timer re-armed
        assert await conn.closed(1.5)
        assert time.monotonic() - last >= 1.4  # a whole timeout after the last response, give or take
        conn.close()


@on_both_loops
async def test_silent_and_crlf_only_connections_close_at_keep_alive_timeout() -> None:
    """A connection that never starts a request (nothing, or bare CRLFs) closes at keep-alive."""
    async with serve(keep_alive=1.0) as port:
        silent = await Conn.open(port)
        crlf = await Conn.open(port)
        started = time.monotonic()

        async def blank_lines() -> None:
            while True:
                await crlf.send(b"\r\n")
                await asyncio.sleep(0.2)

        sender = asyncio.create_task(blank_lines(), name="crlf-sender")
        try:
            assert await crlf.closed(2.0)
            assert await silent.closed(2.0 - (time.monotonic() - started))
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender
        assert time.monotonic() - started < 2.0
        silent.close()
        crlf.close()


# --- pipelining ------------------------------------------------------------------------


@on_both_loops
async def test_pipelined_body_less_requests_are_answered_in_order() -> None:
    """Three GETs in one write get three answers, in order, on a connection that stays open."""
    async with serve() as port:
        conn = await Conn.open(port)
        await conn.send(get_with(b"/1") + get_with(b"/2") + get_with(b"/3"))
        paths = [orjson.loads((await conn.response())[2])["path"] for _ in range(3)]
        assert paths == ["/1", "/2", "/3"]
        await conn.send(GET)
        assert (await conn.response())[0] == 200
        conn.close()


@on_both_loops
async def test_oversized_request_pipelined_behind_a_valid_one_closes_after_its_answer() -> None:
    """The valid request is answered in full (``Connection: close``); the oversized one never runs."""
    async with serve() as port:
        conn = await Conn.open(port)
        await conn.send(get_with(b"/slow") + get_with(b"/" + b"a" * 9000))
        status, headers, body = await conn.response()
        assert status == 200 and orjson.loads(body)["path"] == "/slow"
        assert headers[b"connection"] == b"close"
        assert await conn.closed(2.0)
        assert conn.buf == b""
        conn.close()


@on_both_loops
async def test_head_deadline_waits_while_the_server_owes_earlier_answers() -> None:
    """A pipelined head completed after the deadline, while the server was still busy, is served."""
    async with serve() as port:
        conn = await Conn.open(port)
        await conn.send(get_with(b"/slow") + b"GET /next HTTP/1.1\r\nHost")
        await asyncio.sleep(HEAD_TIMEOUT * 1.3)  # /slow takes 1.5 s
        await conn.send(b": t\r\n\r\n")
        assert orjson.loads((await conn.response())[2])["path"] == "/slow"
        assert orjson.loads((await conn.response())[2])["path"] == "/next"
        conn.close()


# --- many idle connections -------------------------------------------------------------


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY else min(need, hard), hard)
        )
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == resource.RLIM_INFINITY or soft >= need, f"RLIMIT_NOFILE {soft} < {need}"


@on_both_loops
async def test_thousand_idle_connections_do_not_stop_others_being_served() -> None:
    """With 1,000 idle connections (half with a partial head), a new client is served promptly."""
    _raise_fd_limit(2 * 1000 + 256)  # both ends live in this process
    async with serve(ServerLimits(head_timeout=30.0)) as port:
        idle = [await Conn.open(port) for _ in range(1000)]
        try:
            for conn in idle[::2]:
                conn.writer.write(b"GET /partial HTTP/1.1\r\nHost: t\r\nX-")
            await asyncio.gather(*(c.writer.drain() for c in idle[::2]))
            latencies = []
            for _ in range(20):
                started = time.perf_counter()
                await ok(port)
                latencies.append(time.perf_counter() - started)
            assert max(latencies) < 0.5, latencies
            assert not any([await c.closed(0) for c in idle[:10]])
            print(
                f"1000 idle: normal request median {statistics.median(latencies) * 1000:.2f} ms, "
                f"max {max(latencies) * 1000:.2f} ms"
            )
        finally:
            for conn in idle:
                conn.close()


# --- the log line ----------------------------------------------------------------------


@on_both_loops
async def test_each_rejection_is_logged_once_without_header_values() -> None:
    """One ``msa_gateway.server`` record per rejection, with client and reason; no header value."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("msa_gateway.server")
    handler = Keep()
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        async with serve() as port:
            secret = [b"Authorization: Bearer " + SECRET, b"X-Request-ID: rid-431"]
            status, headers, body = await rejected_by(
                port, get_with(headers=[*secret, b"X-Big: " + b"v" * 40000])
            )
            assert_error(status, headers, body, 431, "headers_too_large")
            assert orjson.loads(body)["request_id"] == "rid-431"
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert len(records) == 1
    record = records[0]
    fields = record.__dict__
    assert record.getMessage() == "client_rejected" and record.levelno == logging.INFO
    assert fields["status"] == 431 and fields["reason"] == "header_bytes"
    assert fields["client"].startswith("127.0.0.1:") and fields["request_id"] == "rid-431"
    text = repr(fields)
    assert SECRET.decode() not in text and "vvvv" not in text
