"""The native upstream client against the recording server, on the default loop and on uvloop.

Every test runs once per event loop implementation (``asyncio`` and ``uvloop``): each is an
async scenario wrapped by ``on_both_loops`` into a synchronous test parametrized by loop.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
import uvloop

from msa_gateway.errors import UpstreamError, UpstreamTimeout
from msa_gateway.model import Instance, ServiceOptions, Timeouts
from msa_gateway.proxy.native import REPLAY_LIMIT, NativeClient, _Response
from msa_gateway.proxy.native_conn import HIGH_WATER
from msa_gateway.proxy.upstream import UpstreamClient, UpstreamResponse, create_client
from msa_gateway.write_batch import SHARED_FROM, WriteBatch
from tests.support.procs import free_port
from tests.support.recorder import RecordedRequest, Recorder, Reply, in_order, stream

Scenario = Callable[[], Coroutine[Any, Any, None]]
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
MAX_RECV = 256 * 1024  # the most either loop hands to data_received at once


def on_both_loops(scenario: Scenario) -> Callable[[str], None]:
    """Turn an async scenario into a test run once on each event loop implementation."""

    @pytest.mark.parametrize("loop_name", list(LOOPS))
    def test(loop_name: str) -> None:
        with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
            runner.run(asyncio.wait_for(scenario(), 30))

    test.__name__ = scenario.__name__
    test.__doc__ = scenario.__doc__
    return test


def instance(port: int) -> Instance:
    return Instance(id=f"i-{port}", host="127.0.0.1", port=port)


def options(max_conns: int = 8, connect: float = 2.0, read: float = 5.0) -> ServiceOptions:
    return ServiceOptions(
        timeouts=Timeouts(connect=connect, read=read), max_connections_per_instance=max_conns
    )


async def send(
    client: NativeClient,
    port: int,
    method: str = "GET",
    target: str = "/",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes | AsyncIterator[bytes] | None = None,
    content_length: int | None = None,
    opts: ServiceOptions | None = None,
) -> _Response:
    hdrs = [(b"Host", b"upstream")] if headers is None else headers
    return await client.send(instance(port), opts or options(), method, target, hdrs, body, content_length)


async def read_all(resp: _Response) -> bytes:
    parts = []
    while chunk := await resp.read():
        parts.append(chunk)
    return b"".join(parts)


async def fetch(client: NativeClient, port: int, **kw: Any) -> tuple[int, bytes]:
    resp = await send(client, port, **kw)
    try:
        return resp.status, await read_all(resp)
    finally:
        resp.release()


async def eventually(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


async def parts(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        await asyncio.sleep(0)
        yield chunk


def test_native_client_implements_the_seam_and_is_registered() -> None:
    client: UpstreamClient = NativeClient()  # mypy checks the protocol structurally
    assert client.name == "native"
    assert isinstance(create_client("native"), NativeClient)

    async def head_only() -> UpstreamResponse:
        async with Recorder() as rec:
            resp: UpstreamResponse = await send(NativeClient(), rec.port, method="HEAD")
            resp.close()
            return resp

    assert asyncio.run(head_only()).status == 200


# --- the request, byte for byte ----------------------------------------------------------------


@on_both_loops
async def test_request_head_and_content_length_body_are_sent_byte_for_byte() -> None:
    headers = [
        (b"Host", b"svc.internal:8080"),
        (b"X-Dup", b"one"),
        (b"x-dup", b"two"),
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"11"),
    ]
    async with Recorder() as rec:
        client = NativeClient()
        status, _ = await fetch(
            client,
            rec.port,
            method="POST",
            target="/a%2Fb/../c?q=%20x&q=y",
            headers=headers,
            body=parts(b"hello", b" ", b"world"),
            content_length=11,
        )
        req = await rec.next_request()
        await client.aclose()
    assert status == 200
    assert req.raw_head == (
        b"POST /a%2Fb/../c?q=%20x&q=y HTTP/1.1\r\nHost: svc.internal:8080\r\nX-Dup: one\r\nx-dup: two\r\n"
        b"Content-Type: application/json\r\nContent-Length: 11\r\n\r\n"
    )
    assert req.body == b"hello world" and not req.chunked


@on_both_loops
async def test_body_without_length_is_sent_chunked_one_chunk_per_part() -> None:
    async with Recorder() as rec:
        client = NativeClient()
        await fetch(client, rec.port, method="PUT", body=parts(b"ab", b"", b"cde", b"f" * 70000))
        req = await rec.next_request()
        await client.aclose()
    assert req.raw_head == b"PUT / HTTP/1.1\r\nHost: upstream\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert req.chunked and req.chunks == (b"ab", b"cde", b"f" * 70000)


class Watching:
    """A busy load (writes are held) that notes, each time the batch asks it (every write), how many it holds."""

    def __init__(self) -> None:
        self.batch: WriteBatch | None = None
        self.most = 0

    @property
    def in_flight(self) -> int:
        if self.batch is not None:
            self.most = max(self.most, self.batch.held)
        return SHARED_FROM

    @in_flight.setter
    def in_flight(self, value: int) -> None:  # Load's attribute is settable; nothing here sets it
        raise AssertionError("not expected")


async def at_once(*chunks: bytes) -> AsyncIterator[bytes]:
    """A body whose parts are all there: written in the same turn as the head."""
    for chunk in chunks:
        yield chunk


@on_both_loops
async def test_writes_held_to_the_end_of_the_turn_arrive_whole_and_in_order() -> None:
    async with Recorder() as rec:
        load = Watching()
        batch = load.batch = WriteBatch(load)
        client = NativeClient(writes=batch)

        async def put(i: int) -> tuple[int, bytes]:
            chunks = [b"%d-%d," % (i, k) for k in range(5)]
            return await fetch(client, rec.port, method="PUT", target=f"/r{i}", body=at_once(*chunks))

        results = await asyncio.gather(*(put(i) for i in range(20)))
        got = {req.target: req.chunks for req in await rec.wait_requests(20)}
        await client.aclose()
    assert [status for status, _ in results] == [200] * 20
    assert got == {b"/r%d" % i: tuple(b"%d-%d," % (i, k) for k in range(5)) for i in range(20)}
    assert load.most >= 7 and batch.held == 0  # head, five chunks and the last chunk held at least once


@on_both_loops
async def test_get_without_body_adds_no_header() -> None:
    async with Recorder() as rec:
        client = NativeClient()
        await fetch(client, rec.port, headers=[(b"Host", b"h")])
        req = await rec.next_request()
        await client.aclose()
    assert req.raw_head == b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"


@on_both_loops
async def test_body_shorter_or_longer_than_content_length_fails_and_closes() -> None:
    async with Recorder() as rec:
        client = NativeClient()
        for chunks in ((b"12345",), (b"12345", b"678901")):
            with pytest.raises(UpstreamError) as err:
                await send(
                    client,
                    rec.port,
                    method="POST",
                    headers=[(b"Host", b"h"), (b"Content-Length", b"10")],
                    body=parts(*chunks),
                    content_length=10,
                )
            assert err.value.kind == "protocol_error" and err.value.request_sent
        await eventually(lambda: rec.open_connections == 0)
        assert rec.requests == []  # the recorder never saw a complete request
        assert client.open_count(instance(rec.port).address) == 0
        await client.aclose()


@on_both_loops
async def test_failing_body_iterator_fails_the_request_and_closes() -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"abc"
        raise RuntimeError("client went away")

    async with Recorder() as rec:
        client = NativeClient()
        with pytest.raises(UpstreamError) as err:
            await send(client, rec.port, method="POST", body=broken())
        assert err.value.kind == "reset" and err.value.request_sent
        await eventually(lambda: rec.open_connections == 0)
        await client.aclose()


@on_both_loops
async def test_request_body_respects_flow_control() -> None:
    """A server that stops reading stops the body being pulled (bounded by the socket buffers)."""
    produced = 0
    stop = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await stop.wait()  # never reads the body
        writer.close()

    async def endless() -> AsyncIterator[bytes]:
        nonlocal produced
        piece = b"x" * 65536
        while produced < 512 * 1024 * 1024:
            produced += len(piece)
            yield piece

    server = await asyncio.start_server(stall, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = NativeClient()
    try:
        with pytest.raises(UpstreamTimeout) as err:
            await send(client, port, method="POST", body=endless(), opts=options(read=0.5))
        assert err.value.kind == "read_timeout" and err.value.request_sent
        assert produced < 64 * 1024 * 1024  # kernel buffers plus one piece, not the whole body
    finally:
        stop.set()
        await client.aclose()
        server.close()
        await server.wait_closed()


@on_both_loops
async def test_early_final_response_stops_the_body_and_is_returned() -> None:
    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig")
        await writer.drain()
        await asyncio.sleep(10)  # keep the connection open, read nothing more

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(4096):  # 256 MiB: far more than the socket buffers take
            yield b"y" * 65536

    server = await asyncio.start_server(early, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = NativeClient()
    try:
        resp = await send(client, port, method="POST", body=endless())
        assert resp.status == 413
        assert await read_all(resp) == b"big"
        resp.release()
        assert client.idle_count(instance(port).address) == 0  # the body was cut: not reusable
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


# --- keep-alive and the pool -------------------------------------------------------------------


@on_both_loops
async def test_sequential_requests_share_one_connection() -> None:
    async with Recorder(Reply(body=b"pong")) as rec:
        client = NativeClient()
        for _ in range(20):
            assert await fetch(client, rec.port) == (200, b"pong")
        assert rec.connections == 1
        assert client.idle_count(instance(rec.port).address) == 1
        await client.aclose()


@on_both_loops
async def test_pool_bound_makes_the_extra_request_overflow_without_sending() -> None:
    gate = asyncio.Event()

    async def held(_: RecordedRequest) -> Reply:
        await gate.wait()
        return Reply(body=b"done")

    async with Recorder(held) as rec:
        client = NativeClient()
        opts = options(max_conns=2, connect=0.2)
        busy = [asyncio.create_task(fetch(client, rec.port, opts=opts)) for _ in range(2)]
        await rec.wait_requests(2)
        started = time.monotonic()
        with pytest.raises(UpstreamError) as err:
            await send(client, rec.port, opts=opts)
        assert err.value.kind == "overflow" and not err.value.request_sent
        assert time.monotonic() - started >= 0.19
        gate.set()
        assert [await t for t in busy] == [(200, b"done")] * 2
        assert rec.connections == 2 and len(rec.requests) == 2
        await client.aclose()


@on_both_loops
async def test_waiting_requests_get_the_connection_when_it_comes_back() -> None:
    async with Recorder(Reply(body=b"ok", delay=0.02)) as rec:
        client = NativeClient()
        opts = options(max_conns=1, connect=5.0)
        results = await asyncio.gather(*(fetch(client, rec.port, opts=opts) for _ in range(5)))
        assert results == [(200, b"ok")] * 5
        assert rec.connections == 1
        await client.aclose()


@on_both_loops
async def test_unread_response_closes_its_connection() -> None:
    async with Recorder(Reply(body=b"x" * 100000)) as rec:
        client = NativeClient()
        resp = await send(client, rec.port)
        resp.release()  # nothing read: the connection cannot be reused
        await eventually(lambda: rec.open_connections == 0)
        assert await fetch(client, rec.port) == (200, b"x" * 100000)
        assert rec.connections == 2
        await client.aclose()


@on_both_loops
async def test_retain_closes_idle_connections_of_departed_instances() -> None:
    async with Recorder() as rec, Recorder() as other:
        client = NativeClient()
        await fetch(client, rec.port)
        await fetch(client, other.port)
        keep, gone = instance(other.port).address, instance(rec.port).address
        client.retain({keep})
        assert client.idle_count(gone) == 0 and client.idle_count(keep) == 1
        await eventually(lambda: rec.open_connections == 0)
        assert other.open_connections == 1
        await client.aclose()


@on_both_loops
async def test_busy_connection_of_a_departed_instance_closes_when_released() -> None:
    gate = asyncio.Event()

    async def held(_: RecordedRequest) -> Reply:
        await gate.wait()
        return Reply(body=b"late")

    async with Recorder(held) as rec:
        client = NativeClient()
        task = asyncio.create_task(fetch(client, rec.port))
        await rec.wait_requests(1)
        client.retain(set())
        gate.set()
        assert await task == (200, b"late")
        await eventually(lambda: rec.open_connections == 0)
        await client.aclose()


@on_both_loops
async def test_idle_connections_expire() -> None:
    async with Recorder() as rec:
        client = NativeClient(idle_timeout=0.2, sweep_interval=0.05)
        await fetch(client, rec.port)
        assert rec.open_connections == 1
        sweepers = [t for t in asyncio.all_tasks() if t.get_name() == "upstream_idle_sweeper"]
        assert len(sweepers) == 1
        await eventually(lambda: rec.open_connections == 0)
        assert client.idle_count(instance(rec.port).address) == 0
        await client.aclose()
        assert sweepers[0].done()


@on_both_loops
async def test_idle_connection_closed_by_the_server_is_not_reused() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"  # says keep-alive, then closes
    async with Recorder(Reply(raw=raw)) as rec:
        client = NativeClient()
        assert await fetch(client, rec.port) == (200, b"ok")
        await eventually(lambda: client.idle_count(instance(rec.port).address) == 0)
        assert await fetch(client, rec.port) == (200, b"ok")
        assert rec.connections == 2
        await client.aclose()


@on_both_loops
async def test_aclose_aborts_busy_connections() -> None:
    async with Recorder(Reply.hanging()) as rec:
        client = NativeClient()
        task = asyncio.create_task(send(client, rec.port))
        await rec.wait_requests(1)
        await client.aclose()
        with pytest.raises(UpstreamError) as err:
            await task
        assert err.value.kind == "reset" and err.value.request_sent
        await eventually(lambda: rec.open_connections == 0)


@on_both_loops
async def test_cancelled_requests_free_their_connection_and_their_place_in_line() -> None:
    handler = in_order(Reply.hanging(), Reply(body=b"ok"))
    async with Recorder(handler) as rec:
        client = NativeClient()
        opts = options(max_conns=1, connect=5.0)
        hanging = asyncio.create_task(send(client, rec.port, opts=opts))
        await rec.wait_requests(1)
        queued = asyncio.create_task(send(client, rec.port, opts=opts))
        pool = client._pools[instance(rec.port).address]
        await eventually(lambda: len(pool.waiters) == 1)  # queued behind the busy connection
        queued.cancel()
        hanging.cancel()
        for task in (queued, hanging):
            with pytest.raises(asyncio.CancelledError):
                await task
        await eventually(lambda: rec.open_connections == 0)
        assert client.open_count(instance(rec.port).address) == 0
        assert await fetch(client, rec.port, opts=opts) == (200, b"ok")
        await client.aclose()


# --- stale keep-alive connections --------------------------------------------------------------


@on_both_loops
async def test_stale_pooled_connection_is_retried_transparently_for_get() -> None:
    # The second request finds the pooled connection closed by the server without an answer.
    async with Recorder(in_order(Reply(body=b"one"), Reply.closing(), Reply(body=b"two"))) as rec:
        client = NativeClient()
        assert await fetch(client, rec.port, target="/x") == (200, b"one")
        assert await fetch(client, rec.port, target="/y") == (200, b"two")
        first, stale, retried = await rec.wait_requests(3)
        assert first.connection == stale.connection == 1
        assert stale.raw_head == retried.raw_head and stale.target == b"/y"
        assert rec.connections == 2 and retried.connection == 2
        await client.aclose()


@on_both_loops
async def test_stale_pooled_connection_replays_a_small_idempotent_body() -> None:
    async with Recorder(in_order(Reply(body=b"one"), Reply.resetting(), Reply(body=b"two"))) as rec:
        client = NativeClient()
        await fetch(client, rec.port)
        status, body = await fetch(client, rec.port, method="PUT", body=parts(b"ab", b"cd", b"ef"))
        assert (status, body) == (200, b"two")
        _, stale, retried = await rec.wait_requests(3)
        assert stale.chunks == retried.chunks == (b"ab", b"cd", b"ef")
        assert stale.raw_head == retried.raw_head
        await client.aclose()


@on_both_loops
async def test_stale_pooled_connection_is_not_retried_for_post() -> None:
    async with Recorder(in_order(Reply(body=b"one"), Reply.closing(), Reply(body=b"two"))) as rec:
        client = NativeClient()
        await fetch(client, rec.port)
        with pytest.raises(UpstreamError) as err:
            await send(client, rec.port, method="POST", body=parts(b"data"), content_length=4)
        assert err.value.kind == "reset" and err.value.request_sent
        assert len(rec.requests) == 2 and rec.connections == 1
        await client.aclose()


@on_both_loops
async def test_stale_connection_is_not_retried_when_the_body_was_too_big_to_hold() -> None:
    big = b"z" * (REPLAY_LIMIT + 1)
    async with Recorder(in_order(Reply(body=b"one"), Reply.closing(), Reply(body=b"two"))) as rec:
        client = NativeClient()
        await fetch(client, rec.port)
        with pytest.raises(UpstreamError) as err:
            await send(client, rec.port, method="PUT", body=parts(big), content_length=len(big))
        assert err.value.kind == "reset" and err.value.request_sent
        assert len(rec.requests) == 2
        await client.aclose()


@on_both_loops
async def test_failure_on_a_new_connection_is_not_retried() -> None:
    async with Recorder(in_order(Reply.closing(), Reply(body=b"two"))) as rec:
        client = NativeClient()
        with pytest.raises(UpstreamError) as err:
            await send(client, rec.port)
        assert err.value.kind == "reset" and err.value.request_sent
        assert len(rec.requests) == 1
        await client.aclose()


# --- responses ---------------------------------------------------------------------------------


@on_both_loops
async def test_status_and_raw_headers_keep_order_and_duplicates() -> None:
    reply = Reply(201, headers=[("Set-Cookie", "a=1"), ("X-Other", "x"), ("set-cookie", "b=2")], body=b"{}")
    async with Recorder(reply) as rec:
        client = NativeClient()
        resp = await send(client, rec.port)
        assert resp.status == 201
        assert list(resp.headers) == [
            (b"Set-Cookie", b"a=1"),
            (b"X-Other", b"x"),
            (b"set-cookie", b"b=2"),
            (b"Content-Length", b"2"),
        ]
        assert await read_all(resp) == b"{}" and resp.at_eof()
        resp.release()
        await client.aclose()


@on_both_loops
async def test_chunked_response_is_decoded() -> None:
    async def chunked(_: RecordedRequest) -> Reply:
        return Reply(body=stream([b"alpha,", b"beta,", b"gamma"]))

    async with Recorder(chunked) as rec:
        client = NativeClient()
        resp = await send(client, rec.port)
        assert (b"Transfer-Encoding", b"chunked") in resp.headers
        assert await read_all(resp) == b"alpha,beta,gamma"
        resp.release()
        assert await fetch(client, rec.port) == (200, b"alpha,beta,gamma")
        assert rec.connections == 1
        await client.aclose()


@on_both_loops
async def test_response_without_length_is_read_until_close_and_not_reused() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"until close " * 10000
    async with Recorder(Reply(raw=raw)) as rec:
        client = NativeClient()
        assert await fetch(client, rec.port) == (200, b"until close " * 10000)
        assert client.idle_count(instance(rec.port).address) == 0
        assert await fetch(client, rec.port) == (200, b"until close " * 10000)
        assert rec.connections == 2
        await client.aclose()


@on_both_loops
async def test_head_204_and_304_responses_have_no_body_and_keep_the_connection() -> None:
    handler = in_order(
        Reply(200, headers=[("Content-Length", "12345")]),
        Reply(204),
        Reply(304, headers=[("ETag", '"v1"'), ("Content-Length", "99")]),
        Reply(body=b"after"),
    )
    async with Recorder(handler) as rec:
        client = NativeClient()
        for method, status in (("HEAD", 200), ("DELETE", 204), ("GET", 304)):
            resp = await send(client, rec.port, method=method)
            assert resp.status == status
            assert resp.at_eof()
            assert await resp.read() == b""
            resp.release()
        assert await fetch(client, rec.port) == (200, b"after")
        assert rec.connections == 1
        await client.aclose()


@on_both_loops
async def test_interim_responses_are_skipped() -> None:
    raw = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
    )
    async with Recorder(Reply(raw=raw)) as rec:
        client = NativeClient()
        resp = await send(client, rec.port)
        assert resp.status == 200 and list(resp.headers) == [(b"Content-Length", b"5")]
        assert await read_all(resp) == b"final"
        resp.release()
        await client.aclose()


@on_both_loops
async def test_expect_100_continue_interim_answer_is_skipped() -> None:
    async with Recorder(Reply(body=b"stored")) as rec:
        client = NativeClient()
        headers = [(b"Host", b"h"), (b"Expect", b"100-continue"), (b"Content-Length", b"4")]
        status, body = await fetch(
            client, rec.port, method="POST", headers=headers, body=parts(b"data"), content_length=4
        )
        assert (status, body) == (200, b"stored")
        assert (await rec.next_request()).body == b"data"
        assert await fetch(client, rec.port) == (200, b"stored")
        assert rec.connections == 1
        await client.aclose()


@on_both_loops
async def test_body_chunks_are_readable_as_they_arrive() -> None:
    second = asyncio.Event()

    async def paced() -> AsyncIterator[bytes]:
        yield b"data: first\n\n"
        await second.wait()
        yield b"data: second\n\n"

    async with Recorder(Reply(headers=[("Content-Type", "text/event-stream")], body=paced())) as rec:
        client = NativeClient()
        resp = await send(client, rec.port)
        assert await asyncio.wait_for(resp.read(), 2) == b"data: first\n\n"  # before the second exists
        assert not resp.at_eof()
        second.set()
        assert await read_all(resp) == b"data: second\n\n"
        resp.release()
        await client.aclose()


@on_both_loops
async def test_large_body_is_read_with_bounded_buffering() -> None:
    total = 32 * 1024 * 1024
    piece = b"b" * 65536
    produced = 0

    async def big() -> AsyncIterator[bytes]:
        nonlocal produced
        while produced < total:
            produced += len(piece)
            yield piece

    async with Recorder(Reply(body=big(), headers=[("Content-Length", str(total))])) as rec:
        client = NativeClient()
        resp = await send(client, rec.port)
        received = peak = lead = 0
        while True:
            # Let the buffer fill up to the cap before each read, as a slow downstream would.
            await eventually(lambda: resp.buffered() > HIGH_WATER or produced >= total)
            peak = max(peak, resp.buffered())
            lead = max(lead, produced - received)
            chunk = await resp.read()
            if not chunk:
                break
            received += len(chunk)
        resp.release()
        await client.aclose()
    assert received == total
    assert HIGH_WATER < peak <= HIGH_WATER + MAX_RECV
    assert lead < 24 * 1024 * 1024  # the server was held back, not the whole body queued


# --- failures ----------------------------------------------------------------------------------


@on_both_loops
async def test_garbage_response_is_a_protocol_error() -> None:
    async with Recorder(Reply.garbage()) as rec:
        client = NativeClient()
        with pytest.raises(UpstreamError) as err:
            await send(client, rec.port)
        assert err.value.kind == "protocol_error" and err.value.request_sent
        assert "127.0.0.1" not in err.value.detail and str(rec.port) not in err.value.detail
        await client.aclose()


@on_both_loops
async def test_reset_before_the_response_is_a_reset() -> None:
    async with Recorder(Reply.resetting()) as rec:
        client = NativeClient()
        with pytest.raises(UpstreamError) as err:
            await send(client, rec.port)
        assert err.value.kind == "reset" and err.value.request_sent
        await client.aclose()


@on_both_loops
async def test_refused_connection_sends_nothing() -> None:
    client = NativeClient()
    port = free_port()
    with pytest.raises(UpstreamError) as err:
        await send(client, port)
    assert err.value.kind == "connect_refused" and not err.value.request_sent
    assert str(port) not in err.value.detail
    assert client.open_count(instance(port).address) == 0
    await client.aclose()


@on_both_loops
async def test_connect_timeout_when_the_backlog_is_full() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):  # fill the accept queue; later SYNs are dropped
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
                fillers.append(s)
            client = NativeClient()
            with pytest.raises(UpstreamTimeout) as err:
                await send(client, port, opts=options(connect=0.3))
            assert err.value.kind == "connect_timeout" and not err.value.request_sent
            await client.aclose()
        finally:
            for s in fillers:
                s.close()


@on_both_loops
async def test_hanging_server_is_a_read_timeout() -> None:
    async with Recorder(Reply.hanging()) as rec:
        client = NativeClient()
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout) as err:
            await send(client, rec.port, opts=options(read=0.3))
        assert err.value.kind == "read_timeout" and err.value.request_sent
        assert 0.29 <= time.monotonic() - started < 2
        await eventually(lambda: rec.open_connections == 0)
        await client.aclose()


@on_both_loops
async def test_stalled_body_is_a_read_timeout_between_chunks() -> None:
    never = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield b"first"
        await never.wait()
        yield b"never"

    async with Recorder(Reply(body=stalls())) as rec:
        client = NativeClient()
        resp = await send(client, rec.port, opts=options(read=0.3))
        assert await resp.read() == b"first"
        with pytest.raises(UpstreamTimeout) as err:
            await resp.read()
        assert err.value.kind == "read_timeout"
        resp.release()
        never.set()
        await client.aclose()


@on_both_loops
async def test_truncated_body_fails_on_read() -> None:
    async with Recorder(Reply.truncated(b"t" * 100, 10)) as rec:
        client = NativeClient()
        resp = await send(client, rec.port)
        received = b""
        with pytest.raises(UpstreamError) as err:
            while True:
                chunk = await resp.read()
                assert chunk, "a truncated body must not end cleanly"
                received += chunk
        assert received == b"t" * 10
        assert err.value.kind == "protocol_error"
        assert not resp.at_eof()
        resp.release()
        await client.aclose()


@on_both_loops
async def test_close_aborts_a_pending_read() -> None:
    never = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield b"first"
        await never.wait()
        yield b"x"

    async with Recorder(Reply(body=stalls())) as rec:
        client = NativeClient()
        resp = await send(client, rec.port)
        assert await resp.read() == b"first"
        pending = asyncio.create_task(resp.read())
        await asyncio.sleep(0)
        resp.close()
        with pytest.raises(UpstreamError):
            await pending
        resp.close()  # twice is harmless
        resp.release()  # and so is release after close
        never.set()  # the recorder notices the close when it writes again
        await eventually(lambda: rec.open_connections == 0)
        await client.aclose()


@on_both_loops
async def test_bytes_body_leaves_with_the_head() -> None:
    """A body given as bytes is sent with the head, framed by Content-Length or chunked, on one connection."""
    async with Recorder(in_order(Reply(200, body=b"one", close=False), Reply(200, body=b"two"))) as rec:
        client = NativeClient()
        try:
            hdrs = [(b"Host", b"upstream"), (b"Content-Length", b"5")]
            assert await fetch(
                client, rec.port, method="PUT", headers=hdrs, body=b"hello", content_length=5
            ) == (
                200,
                b"one",
            )
            assert await fetch(client, rec.port, method="POST", body=b"chunky") == (200, b"two")
            first, second = await rec.wait_requests(2)
            assert (first.body, first.chunked) == (b"hello", False)
            assert (second.body, second.chunked) == (b"chunky", True)
            assert rec.connections == 1
        finally:
            await client.aclose()
