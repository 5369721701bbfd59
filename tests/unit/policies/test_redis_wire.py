"""The pipelined Redis connection: replies in order, one write a turn, deadlines without a server.

A fake transport records the writes; the test plays Redis by feeding reply bytes, so it controls
when an answer arrives relative to the loop's timers (a busy loop is not a Redis outage, a silent
Redis is).
"""

from __future__ import annotations

import asyncio
import time

import hiredis
import pytest
from redis.asyncio import Redis

from msa_gateway.policies.redis_wire import Endpoint, Wire, pack

TIMEOUT = 0.05


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def abort(self) -> None:
        self.aborted = True


def wire(timeout: float = TIMEOUT) -> tuple[Wire, FakeTransport]:
    w, t = Wire(timeout), FakeTransport()
    w.connection_made(t)
    return w, t


async def test_one_turns_commands_leave_in_one_write_and_replies_go_back_in_order() -> None:
    w, t = wire(10.0)
    first, second, third = w.send(pack("GET", "a")), w.send(pack("GET", "b")), w.send(pack("PING"))
    await asyncio.sleep(0)
    assert t.writes == [pack("GET", "a") + pack("GET", "b") + pack("PING")]
    w.data_received(b"$1\r\nx\r\n$-1\r\n+PO")  # the third reply split across reads
    assert (first.result(), second.result(), third.done()) == (b"x", None, False)
    w.data_received(b"NG\r\n")
    assert third.result() == b"PONG"


async def test_an_error_reply_is_that_commands_reply_and_the_connection_stays() -> None:
    w, _ = wire(10.0)
    bad, good = w.send(pack("EVALSHA", "x", 0)), w.send(pack("PING"))
    w.data_received(b"-NOSCRIPT No matching script\r\n+PONG\r\n")
    assert isinstance(bad.result(), hiredis.ReplyError) and str(bad.result()).startswith("NOSCRIPT")
    assert good.result() == b"PONG" and w.failed is None


async def test_a_lost_connection_fails_every_command_waiting_and_every_later_one() -> None:
    w, _ = wire(10.0)
    waiting = [w.send(pack("PING")) for _ in range(3)]
    w.connection_lost(None)
    assert all(isinstance(f.result(), ConnectionError) for f in waiting)
    assert isinstance(w.send(pack("PING")).result(), ConnectionError)


async def test_garbage_from_the_server_fails_the_connection() -> None:
    w, t = wire(10.0)
    future = w.send(pack("PING"))
    w.data_received(b"!garbage\r\n")
    assert isinstance(future.result(), hiredis.ProtocolError) and t.aborted


async def test_a_silent_redis_fails_the_connection_after_the_timeout() -> None:
    w, t = wire()
    started = time.perf_counter()
    reply = await w.send(pack("PING"))
    assert isinstance(reply, TimeoutError) and t.aborted
    assert TIMEOUT <= time.perf_counter() - started < 2 * TIMEOUT + 0.2


async def test_an_answer_that_came_while_the_loop_was_busy_is_read_not_counted_as_an_outage() -> None:
    loop = asyncio.get_running_loop()
    w, t = wire()

    def busy_then_answer() -> None:
        time.sleep(TIMEOUT / 5)  # busy past the deadline, though not starved by half a timeout
        loop.call_soon(w.data_received, b"+PONG\r\n")  # the answer arrived meanwhile

    loop.call_later(TIMEOUT * 0.95, busy_then_answer)
    assert await w.send(pack("PING")) == b"PONG"
    assert not t.aborted


async def test_a_starved_loop_gives_the_command_a_second_timeout() -> None:
    loop = asyncio.get_running_loop()
    w, t = wire()
    loop.call_later(TIMEOUT / 2, time.sleep, TIMEOUT * 1.2)  # the timer fires > half a timeout late
    loop.call_later(TIMEOUT * 2.2, w.data_received, b"+PONG\r\n")  # then Redis answers, within 2 x
    assert await w.send(pack("PING")) == b"PONG"
    assert not t.aborted


async def test_an_answered_command_moves_the_deadline_to_the_next_one() -> None:
    loop = asyncio.get_running_loop()
    w, t = wire()
    first = w.send(pack("PING"))
    await asyncio.sleep(TIMEOUT * 0.6)
    second = w.send(pack("PING"))
    w.data_received(b"+PONG\r\n")
    assert first.result() == b"PONG"
    loop.call_later(TIMEOUT * 0.5, w.data_received, b"+PONG\r\n")  # past the first's deadline only
    assert await second == b"PONG" and not t.aborted


def test_the_endpoint_is_the_one_redis_py_was_given() -> None:
    e = Endpoint.of(Redis.from_url("redis://alice:s3cret@cache.internal:6380/4"))
    assert (e.host, e.port, e.path, e.ssl, e.db) == ("cache.internal", 6380, None, None, 4)
    assert e.handshake() == [pack("AUTH", "alice", "s3cret"), pack("SELECT", 4)]
    unix = Endpoint.of(Redis.from_url("unix:///run/redis.sock?db=2", password="pw"))
    assert (unix.path, unix.db, unix.handshake()) == (
        "/run/redis.sock",
        2,
        [pack("AUTH", "pw"), pack("SELECT", 2)],
    )
    tls = Endpoint.of(Redis.from_url("rediss://cache.internal:6380/0"))
    assert tls.ssl is not None and tls.handshake() == []


def test_pack_writes_resp() -> None:
    assert (
        pack("EVALSHA", "ab", 1, "k", 2.5)
        == b"*5\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n$1\r\nk\r\n$3\r\n2.5\r\n"
    )


@pytest.mark.parametrize("late", [False, True])
async def test_a_reply_after_failure_is_ignored(late: bool) -> None:
    w, _ = wire(10.0)
    future = w.send(pack("PING"))
    w.fail(ConnectionError("x"))
    if late:
        w.data_received(b"+PONG\r\n")
    assert isinstance(future.result(), ConnectionError)
