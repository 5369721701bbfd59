"""``write_whole`` writes what uvicorn's own ``send`` writes, in one write, or declines.

The shortcuts work on the gateway's ``RequestCycle``; what they must match is uvicorn's own cycle.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from msa_gateway.request_cycle import MessageEvent, RequestCycle
from msa_gateway.uvicorn_cycle import body_waiting, take_body, take_whole_body, write_whole
from msa_gateway.write_batch import SHARED_FROM, WriteBatch

Headers = list[tuple[bytes, bytes]]
_LOOP = asyncio.new_event_loop()


@pytest.fixture(autouse=True, scope="module")
def _close_loop() -> Iterator[None]:
    yield
    _LOOP.close()


class Transport:
    """Records writes and whether the connection was closed."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def resume_reading(self) -> None:
        pass


def make_cycle(
    method: str = "GET", keep_alive: bool = True, default_headers: Headers | None = None
) -> tuple[RequestCycle, Transport, list[int]]:
    """Return the gateway's cycle for one request, its transport and its ``on_response`` calls."""
    transport = Transport()
    done: list[int] = []
    log = logging.getLogger("test")
    cycle = RequestCycle(
        {"method": method},
        transport,
        FlowControl(transport),  # type: ignore[arg-type]
        log,
        log,
        False,
        default_headers or [],
        MessageEvent(_LOOP),  # these tests never wait on it
        False,
        keep_alive,
        lambda: done.append(1),
    )
    return cycle, transport, done


def make_uvicorn_cycle(
    method: str = "GET", keep_alive: bool = True, default_headers: Headers | None = None
) -> tuple[RequestResponseCycle, Transport, list[int]]:
    """The same for uvicorn's own cycle: what the gateway's must match."""
    transport = Transport()
    done: list[int] = []
    log = logging.getLogger("test")
    cycle = RequestResponseCycle(
        scope={"method": method},  # type: ignore[typeddict-item]
        transport=transport,  # type: ignore[arg-type]
        flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=log,
        access_logger=log,
        access_log=False,
        default_headers=default_headers or [],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: done.append(1),
    )
    return cycle, transport, done


def through_uvicorn(status: int, headers: Headers, body: bytes, **kwargs: Any) -> tuple[bytes, bool]:
    cycle, transport, _ = make_uvicorn_cycle(**kwargs)

    async def send_both() -> None:
        await cycle.send({"type": "http.response.start", "status": status, "headers": headers})
        await cycle.send({"type": "http.response.body", "body": body})

    asyncio.run(send_both())
    return b"".join(transport.writes), transport.closed


CASES = [
    pytest.param(
        200, [(b"Content-Type", b"application/json"), (b"content-length", b"2")], b"{}", {}, id="length"
    ),
    pytest.param(200, [(b"x-a", b"1")], b"hello", {}, id="chunked"),
    pytest.param(200, [], b"hello", {}, id="no-headers"),
    pytest.param(
        200,
        [(b"server", b"nginx"), (b"X-Mixed", b"Case"), (b"content-length", b"2"), (b"x-request-id", b"r1")],
        b"ok",
        {"default_headers": [(b"date", b"Fri, 04 Dec 2026 23:00:00 GMT")]},
        id="mixed-case-and-defaults",
    ),
    pytest.param(200, [(b"x-a", b"1")], b"", {}, id="chunked-empty"),
    pytest.param(200, [(b"content-length", b"5")], b"", {"method": "HEAD"}, id="head"),
    pytest.param(204, [(b"x-a", b"1")], b"", {}, id="no-content"),
    pytest.param(304, [(b"etag", b'"x"')], b"", {}, id="not-modified"),
    pytest.param(200, [(b"content-length", b"2")], b"ok", {"keep_alive": False}, id="closing"),
    pytest.param(
        404, [(b"content-length", b"0")], b"", {"default_headers": [(b"server", b"uvicorn")]}, id="defaults"
    ),
]


@pytest.mark.parametrize(("status", "headers", "body", "kwargs"), CASES)
def test_one_write_is_byte_for_byte_what_uvicorn_writes(
    status: int, headers: Headers, body: bytes, kwargs: dict[str, Any]
) -> None:
    expected, closed = through_uvicorn(status, headers, body, **kwargs)
    cycle, transport, done = make_cycle(**kwargs)
    assert write_whole(cycle.send, status, headers, body)
    assert transport.writes == [expected]
    assert transport.closed is closed
    assert cycle.response_complete and cycle.message_event.is_set() and done == [1]


REFUSED = [
    pytest.param(200, [(b"x-a", b"1\r\nset-cookie: x")], b"", id="header-splitting"),
    pytest.param(200, [(b"x a", b"1")], b"", id="bad-name"),
    pytest.param(200, [(b"content-length", b"3")], b"ok", id="length-mismatch"),
    pytest.param(200, [(b"content-length", b"2"), (b"content-length", b"2")], b"ok", id="two-lengths"),
    pytest.param(200, [(b"transfer-encoding", b"chunked")], b"ok", id="own-framing"),
    pytest.param(204, [], b"body", id="body-on-204"),
    pytest.param(99, [], b"", id="unknown-status"),
]


@pytest.mark.parametrize(("status", "headers", "body"), REFUSED)
def test_declines_and_writes_nothing_when_uvicorn_would_refuse_or_frame_it_itself(
    status: int, headers: Headers, body: bytes
) -> None:
    cycle, transport, done = make_cycle()
    assert not write_whole(cycle.send, status, headers, body)
    assert transport.writes == [] and not cycle.response_started and done == []


def test_declines_when_writes_are_paused_or_the_client_left() -> None:
    paused, _, _ = make_cycle()
    paused.flow.write_paused = True
    gone, _, _ = make_cycle()
    gone.disconnected = True
    for cycle in (paused, gone):
        assert not write_whole(cycle.send, 200, [(b"content-length", b"0")], b"")


class Busy:
    in_flight = SHARED_FROM  # enough requests in flight: the batch holds writes


def test_a_kept_alive_response_goes_through_the_batch_one_that_closes_is_written_before_the_close() -> None:
    async def scenario() -> tuple[list[bytes], list[bytes], bool, list[bytes]]:
        batch = WriteBatch(Busy())
        kept, kept_transport, kept_done = make_cycle()
        closing, closing_transport, _ = make_cycle(keep_alive=False)
        assert write_whole(kept.send, 200, [(b"content-length", b"2")], b"ok", batch)
        assert write_whole(closing.send, 200, [(b"content-length", b"2")], b"ok", batch)
        held = list(kept_transport.writes)
        assert kept.response_complete and kept_done == [1]  # bookkeeping at once, bytes at the turn's end
        await asyncio.sleep(0)
        return held, closing_transport.writes, closing_transport.closed, kept_transport.writes

    held, closed_writes, closed, kept_writes = asyncio.run(scenario())
    assert held == [] and len(kept_writes) == 1 and kept_writes[0].endswith(b"\r\n\r\nok")
    assert len(closed_writes) == 1 and b"connection: close" in closed_writes[0] and closed


def test_declines_for_a_send_that_is_not_the_gateway_cycles() -> None:
    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("not called")

    uvicorns, transport, _ = make_uvicorn_cycle()
    for other in (send, uvicorns.send):
        assert not write_whole(other, 200, [(b"content-length", b"0")], b"")
        assert not body_waiting(other)
    assert transport.writes == []


def test_body_waiting_follows_the_cycles_message_event() -> None:
    cycle, _, _ = make_cycle()
    assert not body_waiting(cycle.receive)
    cycle.message_event.set()
    assert body_waiting(cycle.receive)


def _arrived(cycle: RequestCycle | RequestResponseCycle, body: bytes, more: bool) -> None:
    """What uvicorn's protocol does when a body part arrives."""
    cycle.body += body
    cycle.more_body = more
    cycle.message_event.set()


@pytest.mark.parametrize("more", [False, True])
def test_take_body_takes_a_part_that_is_there_as_receive_does(more: bool) -> None:
    ours, _, _ = make_cycle("POST")
    theirs, _, _ = make_uvicorn_cycle("POST")
    for cycle in (ours, theirs):
        _arrived(cycle, b"hello", more)
        cycle.flow.read_paused = True
    taken = take_body(ours.receive)
    message = asyncio.run(theirs.receive())
    assert taken == (message["body"], message["more_body"]) == (b"hello", more)  # type: ignore[typeddict-item]
    for cycle in (ours, theirs):  # left as receive leaves it: emptied, event cleared, reading resumed
        assert cycle.body == bytearray() and not cycle.message_event.is_set() and not cycle.flow.read_paused
    assert take_body(ours.receive) is None  # nothing more there


def test_take_body_leaves_to_receive_what_it_would_not_answer_at_once() -> None:
    waiting, _, _ = make_cycle("POST")
    assert take_body(waiting.receive) is None  # nothing there yet
    gone, _, _ = make_cycle("POST")
    _arrived(gone, b"x", False)
    gone.disconnected = True
    answered, _, _ = make_cycle("POST")
    _arrived(answered, b"x", False)
    answered.response_complete = True
    continued, _, _ = make_cycle("POST")
    _arrived(continued, b"x", False)
    continued.waiting_for_100_continue = True  # receive writes the interim 100 first
    for cycle in (gone, answered, continued):
        assert take_body(cycle.receive) is None and cycle.body == b"x" and cycle.message_event.is_set()

    async def not_a_cycles() -> dict[str, Any]:
        return {}

    assert take_body(not_a_cycles) is None


def test_take_whole_body_takes_the_body_only_when_all_of_it_is_there() -> None:
    partial, _, _ = make_cycle("POST")
    _arrived(partial, b"hel", True)
    assert take_whole_body(partial.receive) is None  # more follows: nothing taken
    assert partial.body == b"hel" and partial.message_event.is_set()
    _arrived(partial, b"lo", False)
    partial.flow.read_paused = True
    assert take_whole_body(partial.receive) == b"hello"
    assert partial.body == bytearray() and not partial.message_event.is_set() and not partial.flow.read_paused
    assert take_whole_body(partial.receive) is None  # taken already
    gone, _, _ = make_cycle("POST")
    _arrived(gone, b"x", False)
    gone.disconnected = True
    assert take_whole_body(gone.receive) is None and gone.body == b"x"


def _uvicorn_refuses(headers: Headers) -> bool:
    try:
        through_uvicorn(200, headers, b"ok")
    except RuntimeError:
        return True
    return False


@pytest.mark.parametrize("where", ["name", "value"])
def test_declines_exactly_for_the_bytes_uvicorn_refuses(where: str) -> None:
    """Every byte value inside a header name or value: one write when uvicorn writes it, else nothing."""
    for byte in range(256):
        field = b"x-a" + bytes([byte]) + b"b"
        headers = [(field, b"1")] if where == "name" else [(b"x-a", field)]
        cycle, transport, _ = make_cycle()
        wrote = write_whole(cycle.send, 200, [*headers, (b"content-length", b"2")], b"ok")
        assert wrote is not _uvicorn_refuses([*headers, (b"content-length", b"2")]), (where, byte)
        assert bool(transport.writes) is wrote
