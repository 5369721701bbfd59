"""The native client's pure parts: head serialisation, chunk framing and response parsing, no sockets.

The connection protocol is driven by hand: a fake transport records what the protocol asks of it,
and response bytes are fed to ``data_received`` exactly as a socket would deliver them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from msa_gateway.proxy import native_conn
from msa_gateway.proxy.native_conn import (
    BAD_RESPONSE,
    HEAD_TOO_LARGE,
    HIGH_WATER,
    INCOMPLETE_HEAD,
    LOST,
    MAX_HEAD,
    MAX_HEADERS,
    RESET_MID_BODY,
    TRUNCATED,
    UPGRADE,
    Conn,
    InvalidHead,
    frame_chunk,
    is_framed,
    serialize_head,
)


class FakeTransport:
    """Records writes and flow-control calls instead of touching a socket."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False
        self.pause_calls = 0
        self.resume_calls = 0

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.pause_calls += 1

    def resume_reading(self) -> None:
        self.resume_calls += 1


def new_conn(head_req: bool = False) -> tuple[Conn, FakeTransport]:
    """Return a connection in the middle of an exchange (request written) and its transport."""
    conn = Conn(asyncio.new_event_loop())
    conn.loop.close()
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.start(head_req, 1.0)
    conn.write(b"GET / HTTP/1.1\r\n\r\n")
    return conn, transport


def feed(conn: Conn, data: bytes, step: int | None = None) -> None:
    """Deliver ``data`` whole or in pieces of ``step`` bytes."""
    if step is None:
        conn.data_received(data)
        return
    for i in range(0, len(data), step):
        conn.data_received(data[i : i + step])


def body_of(conn: Conn) -> bytes:
    return conn.take() if conn.chunks else b""


# --- request side ----------------------------------------------------------------------------


def test_head_is_request_line_then_headers_as_given_then_crlf() -> None:
    headers = [(b"Host", b"svc:80"), (b"X-Dup", b"1"), (b"x-dup", b"2"), (b"Content-Length", b"3")]
    head = serialize_head("POST", "/a%2Fb?q=1", headers, chunked=False)
    assert head == (
        b"POST /a%2Fb?q=1 HTTP/1.1\r\nHost: svc:80\r\nX-Dup: 1\r\nx-dup: 2\r\nContent-Length: 3\r\n\r\n"
    )


def test_head_adds_transfer_encoding_only_when_chunked() -> None:
    assert (
        serialize_head("GET", "/", [(b"host", b"h")], chunked=False) == b"GET / HTTP/1.1\r\nhost: h\r\n\r\n"
    )
    assert (
        serialize_head("PUT", "/", [(b"host", b"h")], chunked=True)
        == b"PUT / HTTP/1.1\r\nhost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    )


def test_head_with_no_headers() -> None:
    assert serialize_head("OPTIONS", "*", [], chunked=False) == b"OPTIONS * HTTP/1.1\r\n\r\n"


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/a b", []),
        ("/a\r\nX: y", []),
        ("/", [(b"x-a", b"1\r\nX-Injected: 1")]),
        ("/", [(b"x-a", b"bare\nlf")]),
        ("/", [(b"x-a", b"bare\rcr")]),
        ("/", [(b"x-a\r\nx-b", b"v")]),
    ],
)
def test_head_refuses_cr_lf_or_space_that_would_split_it(
    target: str, headers: list[tuple[bytes, bytes]]
) -> None:
    with pytest.raises(InvalidHead):
        serialize_head("GET", target, headers, chunked=False)


def test_chunk_framing_is_hex_size_crlf_data_crlf() -> None:
    assert frame_chunk(b"hello") == b"5\r\nhello\r\n"
    assert frame_chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert frame_chunk(b"\r\n") == b"2\r\n\r\n\r\n"
    assert native_conn.LAST_CHUNK == b"0\r\n\r\n"


def test_is_framed_recognises_length_and_final_chunked() -> None:
    assert is_framed([(b"Content-Length", b"0")])
    assert is_framed([(b"transfer-encoding", b"gzip, Chunked")])
    assert not is_framed([(b"Transfer-Encoding", b"chunked, gzip")])
    assert not is_framed([(b"Content-Type", b"text/plain")])


def test_write_marks_the_exchange_as_sent() -> None:
    conn = Conn(asyncio.new_event_loop())
    conn.loop.close()
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.start(False, None)
    assert not conn.written
    conn.write(b"abc")
    assert conn.written and transport.written == [b"abc"]


# --- response side ---------------------------------------------------------------------------


def test_content_length_response_keeps_raw_headers_in_order_with_duplicates() -> None:
    conn, _ = new_conn()
    feed(
        conn,
        b"HTTP/1.1 201 Created\r\nSet-Cookie: a=1\r\nContent-Length: 5\r\nset-cookie: b=2\r\n\r\nhello",
    )
    assert conn.head_done and conn.done and conn.failure is None
    assert conn.status == 201
    assert conn.headers == [(b"Set-Cookie", b"a=1"), (b"Content-Length", b"5"), (b"set-cookie", b"b=2")]
    assert body_of(conn) == b"hello"
    assert conn.reusable()


@pytest.mark.parametrize("step", [None, 1, 7])
def test_chunked_response_is_decoded_whatever_the_split(step: int | None) -> None:
    conn, _ = new_conn()
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    feed(conn, data, step)
    assert conn.done and conn.failure is None
    assert body_of(conn) == b"hello world"
    assert conn.headers == [(b"Transfer-Encoding", b"chunked")]  # the trailer is dropped
    assert conn.reusable()


def test_head_arrives_before_the_body_and_body_arrives_in_pieces() -> None:
    conn, _ = new_conn()
    feed(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n")
    assert conn.head_done and not conn.done and not conn.chunks
    feed(conn, b"abc")
    assert conn.take() == b"abc" and not conn.done
    feed(conn, b"def")
    assert conn.take() == b"def" and conn.done


def test_interim_100_and_103_are_skipped() -> None:
    conn, _ = new_conn()
    feed(
        conn,
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        step=5,
    )
    assert conn.status == 200
    assert conn.headers == [(b"Content-Length", b"2")]
    assert body_of(conn) == b"ok" and conn.reusable()


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body(status: int) -> None:
    conn, _ = new_conn()
    feed(conn, b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status)
    assert conn.status == status and conn.done and not conn.chunks
    assert conn.reusable()


def test_head_response_ends_with_its_head_despite_content_length() -> None:
    conn, _ = new_conn(head_req=True)
    feed(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nX-A: 1\r\n\r\n", step=3)
    assert conn.done and conn.status == 200 and not conn.chunks
    assert conn.headers == [(b"Content-Length", b"1234"), (b"X-A", b"1")]
    assert conn.reusable()
    # The next exchange on the same connection parses from a clean state.
    conn.start(False, 1.0)
    feed(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    assert conn.done and body_of(conn) == b"hi"


def test_head_response_after_interim_response() -> None:
    conn, _ = new_conn(head_req=True)
    feed(conn, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")
    assert conn.done and conn.status == 200 and conn.reusable()


def test_body_after_a_head_response_makes_the_connection_unusable() -> None:
    conn, _ = new_conn(head_req=True)
    feed(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert conn.done and conn.status == 200
    assert not conn.reusable()


def test_response_without_length_is_read_until_close() -> None:
    conn, transport = new_conn()
    feed(conn, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, ")
    feed(conn, b"part two")
    assert conn.head_done and not conn.done
    conn.connection_lost(None)
    assert conn.done and conn.failure is None
    assert body_of(conn) == b"part one, part two"
    assert not conn.reusable()
    assert not transport.aborted


def test_truncated_body_fails_on_close_and_on_reset() -> None:
    conn, _ = new_conn()
    feed(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    conn.connection_lost(None)
    assert conn.failure is TRUNCATED and not conn.done
    conn, _ = new_conn()
    feed(conn, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    conn.connection_lost(ConnectionResetError())
    assert conn.failure is RESET_MID_BODY


def test_close_before_any_byte_and_inside_the_head() -> None:
    conn, _ = new_conn()
    conn.connection_lost(None)
    assert conn.failure is LOST and not conn.got_bytes
    conn, _ = new_conn()
    feed(conn, b"HTTP/1.1 200 OK\r\nContent-")
    conn.connection_lost(None)
    assert conn.failure is INCOMPLETE_HEAD


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\xffTHIS IS NOT HTTP\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
    ],
    ids=[
        "garbage",
        "status",
        "chunk-size",
        "chunk-crlf",
        "two-lengths",
        "length-and-chunked",
        "negative-length",
        "space-in-name",
        "obs-fold",
    ],
)
def test_strict_parsing_rejects_invalid_responses(data: bytes) -> None:
    conn, transport = new_conn()
    feed(conn, data)
    assert conn.failure is BAD_RESPONSE
    assert transport.aborted and not conn.reusable()


def test_upgrade_is_refused() -> None:
    conn, transport = new_conn()
    feed(conn, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
    assert conn.failure is UPGRADE and transport.aborted


def test_head_larger_than_the_cap_in_one_piece_or_many() -> None:
    big = b"X-Big: " + b"v" * MAX_HEAD + b"\r\n"
    conn, transport = new_conn()
    feed(conn, b"HTTP/1.1 200 OK\r\n" + big + b"Content-Length: 0\r\n\r\n")
    assert conn.failure is HEAD_TOO_LARGE and transport.aborted
    conn, _ = new_conn()
    feed(conn, b"HTTP/1.1 200 OK\r\n" + big, step=4096)  # the head never ends
    assert conn.failure is HEAD_TOO_LARGE
    conn, _ = new_conn(head_req=True)
    feed(conn, b"HTTP/1.1 200 OK\r\n" + big, step=4096)
    assert conn.failure is HEAD_TOO_LARGE


def test_head_just_under_the_cap_is_accepted() -> None:
    conn, _ = new_conn()
    filler = b"X-Big: " + b"v" * (MAX_HEAD - 200) + b"\r\n"
    feed(conn, b"HTTP/1.1 200 OK\r\n" + filler + b"Content-Length: 0\r\n\r\n", step=8192)
    assert conn.failure is None and conn.done


def test_more_than_100_headers_is_refused_and_100_accepted() -> None:
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS - 1))
    conn, _ = new_conn()
    feed(conn, b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 0\r\n\r\n")
    assert conn.failure is None and len(conn.headers) == MAX_HEADERS
    conn, _ = new_conn()
    feed(conn, b"HTTP/1.1 200 OK\r\n" + fields + b"X-One-Too-Many: v\r\nContent-Length: 0\r\n\r\n")
    assert conn.failure is HEAD_TOO_LARGE


def test_back_pressure_pauses_reading_above_the_high_water_and_resumes_on_take() -> None:
    conn, transport = new_conn()
    feed(conn, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (4 * HIGH_WATER))
    piece = b"x" * 65536
    while not transport.pause_calls:
        feed(conn, piece)
    assert HIGH_WATER < conn.buffered <= HIGH_WATER + len(piece)
    assert transport.pause_calls == 1
    feed(conn, piece)  # bytes already in flight still queue, without pausing twice
    assert transport.pause_calls == 1
    while conn.buffered > HIGH_WATER:
        assert transport.resume_calls == 0
        assert conn.take() == piece  # big pieces are handed out one by one, never copied together
    assert transport.resume_calls == 1 and not conn.paused_reading


def test_small_queued_pieces_are_joined_into_one_read() -> None:
    conn, _ = new_conn()
    feed(conn, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    feed(conn, b"3\r\nabc\r\n")
    feed(conn, b"2\r\nde\r\n")
    feed(conn, b"1\r\nf\r\n")
    assert conn.take() == b"abcdef" and conn.buffered == 0 and not conn.chunks


@pytest.mark.parametrize(
    ("head", "keep"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n", True),
    ],
)
def test_keep_alive_follows_the_response(head: bytes, keep: bool) -> None:
    conn, _ = new_conn()
    feed(conn, head)
    assert conn.done
    assert conn.reusable() is keep


def test_a_second_response_after_the_final_one_makes_the_connection_unusable() -> None:
    conn, _ = new_conn()
    feed(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n")
    assert conn.done and body_of(conn) == b"ok"
    assert conn.failure is None
    assert not conn.reusable()


def test_bytes_while_no_exchange_is_running_close_the_connection() -> None:
    conn = Conn(asyncio.new_event_loop())
    conn.loop.close()
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    assert transport.aborted and not conn.keep


def test_pause_and_resume_writing_track_the_transport() -> None:
    conn, _ = new_conn()
    conn.pause_writing()
    assert conn.paused_writing
    conn.resume_writing()
    assert not conn.paused_writing


def live_conn(read_timeout: float | None) -> tuple[Conn, Any]:
    """Return a connection on the running loop with a request written, and its transport."""
    conn = Conn(asyncio.get_running_loop())
    transport: Any = FakeTransport()
    conn.connection_made(transport)
    conn.start(False, read_timeout)
    conn.write(b"GET / HTTP/1.1\r\n\r\n")
    return conn, transport


async def waiting(conn: Conn) -> asyncio.Future[None]:
    """Start ``conn.wait()`` and let it run to its await."""
    wait = asyncio.ensure_future(conn.wait())
    await asyncio.sleep(0)
    return wait


OK_EMPTY = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


async def test_wait_times_out_with_read_timeout() -> None:
    conn, transport = live_conn(0.05)
    await conn.wait()
    assert conn.failure is native_conn.TIMED_OUT and transport.aborted


async def test_waits_share_one_timer_which_re_arms_for_a_later_deadline_and_fails_at_the_last() -> None:
    conn, transport = live_conn(30.0)  # the timer never fires by itself here: the test fires it
    first = await waiting(conn)
    timer, first_deadline = conn.timer, conn.deadline
    assert timer is not None and first_deadline > 0
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
    await first
    assert conn.head_done and conn.failure is None and conn.timer is timer  # still armed, not cancelled
    second = await waiting(conn)
    assert conn.timer is timer and conn.deadline >= first_deadline  # no second timer
    timer.cancel()
    conn._on_timer()  # the first deadline comes: this wait has a later one, so the timer re-arms
    assert conn.timer is not None and conn.timer is not timer and conn.failure is None
    conn.deadline = conn.loop.time() - 0.01  # and when this wait's own deadline has passed, it fails
    conn.timer.cancel()
    conn._on_timer()
    await second
    assert conn.failure is native_conn.TIMED_OUT and transport.aborted


async def test_a_wait_without_a_read_timeout_outlives_the_timer_an_earlier_wait_armed() -> None:
    conn, _ = live_conn(30.0)
    first = await waiting(conn)
    conn.data_received(OK_EMPTY)
    await first
    timer = conn.timer
    assert timer is not None
    conn.start(False, None)  # the next exchange on this connection (another service's) has no read timeout
    conn.write(b"GET / HTTP/1.1\r\n\r\n")
    second = await waiting(conn)
    timer.cancel()
    conn._on_timer()  # the earlier wait's deadline comes
    assert conn.failure is None and not second.done() and conn.timer is None
    conn.data_received(OK_EMPTY)
    await second
    assert conn.failure is None and conn.done


async def test_a_timer_due_in_the_turn_the_answer_came_does_not_fail_the_exchange() -> None:
    conn, transport = live_conn(0.05)
    wait = await waiting(conn)
    conn.data_received(OK_EMPTY)  # the waiter is done...
    assert conn.timer is not None
    conn.timer.cancel()
    conn.deadline = conn.loop.time() - 0.01  # ...when a starved loop runs the timer, past its deadline,
    conn._on_timer()  # before the waiting task resumed
    await wait
    assert conn.failure is None and conn.done and not transport.aborted


async def test_wait_wakes_on_the_head() -> None:
    conn, _ = live_conn(5.0)
    conn.loop.call_soon(conn.data_received, OK_EMPTY)
    await conn.wait()
    assert conn.head_done and conn.failure is None


async def test_a_read_wakes_the_wait_once_it_brings_the_head_or_anything_after_it() -> None:
    conn, _ = live_conn(5.0)
    wait = await waiting(conn)
    woken = conn.waiter
    assert woken is not None
    conn.data_received(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-")  # interim, half a head
    assert not woken.done()
    conn.data_received(b"Length: 4\r\n\r\nab")  # the head and half the body: parsed whole, then woken
    assert woken.done() and conn.head_done and conn.buffered == 2
    await wait
    wait = await waiting(conn)
    woken = conn.waiter
    assert woken is not None
    conn.data_received(b"cd")  # body bytes alone, the end with them
    assert woken.done() and conn.done and conn.take() == b"abcd"
    await wait
