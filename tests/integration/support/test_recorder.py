"""The recorder records requests byte for byte and performs every programmed answer and fault."""

from __future__ import annotations

import asyncio
import http.client
import time

import aiohttp
import pytest

from tests.support.recorder import RecordedRequest, Recorder, RecorderThread, Reply, in_order, stream


async def exchange(port: int, data: bytes, read: bool = True) -> bytes:
    """Send ``data`` on a fresh connection and return everything received until the peer closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 5) if read else b""
    finally:
        writer.close()


async def test_target_and_request_line_are_recorded_byte_for_byte() -> None:
    target = b"/svc/a%2Fb/../%7e;p=1?q=%20x&q=y+z&empty="
    async with Recorder() as rec:
        answer = await exchange(
            rec.port, b"GET " + target + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        req = await rec.next_request()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert req.target == target
    assert req.request_line == b"GET " + target + b" HTTP/1.1"
    assert (req.method, req.version) == (b"GET", b"HTTP/1.1")
    assert req.peer[0] == "127.0.0.1"


async def test_duplicate_headers_keep_order_case_and_values() -> None:
    head = (
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Dup: one\r\nx-dup:  two \r\nCookie: a=1\r\nConnection: close\r\n\r\n"
    )
    async with Recorder() as rec:
        await exchange(rec.port, head)
        req = await rec.next_request()
    assert req.headers == (
        (b"Host", b"h"),
        (b"X-Dup", b"one"),
        (b"x-dup", b"two"),
        (b"Cookie", b"a=1"),
        (b"Connection", b"close"),
    )
    assert req.header_values("X-DUP") == [b"one", b"two"]
    assert req.raw_head == head


async def test_chunked_body_is_decoded_and_framing_kept() -> None:
    data = (
        b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    async with Recorder() as rec:
        await exchange(rec.port, data)
        req = await rec.next_request()
    assert req.chunked
    assert req.body == b"hello world"
    assert req.chunks == (b"hello", b" ", b"world")
    assert req.trailers == ((b"X-Trailer", b"t"),)


async def test_content_length_body_from_aiohttp() -> None:
    async with Recorder() as rec, aiohttp.ClientSession() as session:
        async with session.post(f"{rec.url}/p", data=b"x" * 70000) as resp:
            assert resp.status == 200
        req = await rec.next_request()
    assert not req.chunked
    assert req.body == b"x" * 70000
    assert req.header("content-length") == b"70000"


async def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    async with Recorder(Reply(body=b"abc")) as rec:
        reader, writer = await asyncio.open_connection("127.0.0.1", rec.port)
        for path in (b"/1", b"/2"):
            writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: h\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"Content-Length: 3" in head
            assert await reader.readexactly(3) == b"abc"
        writer.close()
        first, second = await rec.next_request(), await rec.next_request()
    assert rec.connections == 1
    assert first.connection == second.connection == 1
    assert (first.target, second.target, first.index, second.index) == (b"/1", b"/2", 0, 1)


async def test_duplicate_response_headers_and_status_reach_the_client() -> None:
    reply = Reply(201, [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("X-Raw", "v")], b"made")
    async with Recorder(reply) as rec, aiohttp.ClientSession() as session, session.get(rec.url) as resp:
        assert resp.status == 201
        assert resp.headers.getall("Set-Cookie") == ["a=1", "b=2"]
        assert await resp.read() == b"made"


async def test_streamed_reply_is_chunked_and_paced() -> None:
    async def handler(_: RecordedRequest) -> Reply:
        return Reply(
            headers=[("Content-Type", "text/event-stream")], body=stream([b"a", b"b", b"c"], delay=0.2)
        )

    async with Recorder(handler) as rec, aiohttp.ClientSession() as session, session.get(rec.url) as resp:
        assert resp.headers["Transfer-Encoding"] == "chunked"
        arrivals = []
        async for chunk in resp.content.iter_any():
            arrivals.append((chunk, time.monotonic()))
    assert b"".join(c for c, _ in arrivals) == b"abc"
    assert arrivals[-1][1] - arrivals[0][1] >= 0.35


async def test_close_without_answer() -> None:
    async with Recorder(Reply.closing()) as rec:
        assert await exchange(rec.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n") == b""
        await rec.next_request()


async def test_reset_without_answer() -> None:
    async with Recorder(Reply.resetting()) as rec:
        with pytest.raises(ConnectionResetError):
            await exchange(rec.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")


async def test_hang_never_answers_but_records() -> None:
    async with Recorder(Reply.hanging()) as rec, aiohttp.ClientSession() as session:
        with pytest.raises(asyncio.TimeoutError):
            await session.get(rec.url, timeout=aiohttp.ClientTimeout(total=0.3))
        req = await rec.next_request()
        assert req.method == b"GET"


async def test_garbage_is_sent_verbatim() -> None:
    async with Recorder(Reply.garbage(b"\x00\x01nope")) as rec:
        assert await exchange(rec.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n") == b"\x00\x01nope"
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientResponseError):
                await session.get(rec.url)


async def test_truncated_body_fails_the_client() -> None:
    async with Recorder(Reply.truncated(b"0123456789", sent=4)) as rec:
        raw = await exchange(rec.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert raw.endswith(b"Content-Length: 10\r\n\r\n0123")
        async with aiohttp.ClientSession() as session, session.get(rec.url) as resp:
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()


async def test_truncated_stream_omits_the_last_chunk() -> None:
    async def handler(_: RecordedRequest) -> Reply:
        return Reply(body=stream([b"aaaa", b"bbbb"]), truncate=6)

    async with Recorder(handler) as rec:
        raw = await exchange(rec.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert raw.endswith(b"\r\n\r\n4\r\naaaa\r\n4\r\nbb")


async def test_delay_slows_the_answer_and_in_order_sequences_replies() -> None:
    async with (
        Recorder(in_order(Reply(503, delay=0.3), Reply(200))) as rec,
        aiohttp.ClientSession() as session,
    ):
        started = time.monotonic()
        async with session.get(rec.url) as resp:
            assert resp.status == 503
        assert time.monotonic() - started >= 0.3
        for _ in range(2):
            async with session.get(rec.url) as resp:
                assert resp.status == 200


async def test_handler_failure_answers_500_and_is_kept() -> None:
    async def handler(_: RecordedRequest) -> Reply:
        raise RuntimeError("boom")

    async with Recorder(handler) as rec, aiohttp.ClientSession() as session:
        async with session.get(rec.url) as resp:
            assert resp.status == 500
        assert [str(e) for e in rec.errors] == ["boom"]


async def test_close_drops_open_connections() -> None:
    rec = await Recorder(Reply.hanging()).start()
    reader, writer = await asyncio.open_connection("127.0.0.1", rec.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    await rec.next_request()
    await asyncio.wait_for(rec.close(), 2)
    assert await asyncio.wait_for(reader.read(), 2) == b""
    assert rec.open_connections == 0
    writer.close()


def test_recorder_thread_serves_synchronous_clients() -> None:
    with RecorderThread(Reply(202, body=b"thread")) as rec:
        conn = http.client.HTTPConnection("127.0.0.1", rec.port, timeout=5)
        conn.request("PUT", "/x?y=1", body=b"payload", headers={"X-A": "1"})
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (202, b"thread")
        conn.close()
        req = rec.next_request(timeout=2)
        assert (req.method, req.target, req.body) == (b"PUT", b"/x?y=1", b"payload")
        assert req.header("x-a") == b"1"
        assert rec.connections == 1
