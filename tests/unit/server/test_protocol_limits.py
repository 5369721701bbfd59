"""``GatewayHttpProtocol`` without sockets: pure helpers, and the byte accounting fed chunk by chunk."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson
import pytest
import uvicorn
from uvicorn.server import ServerState

from msa_gateway.protocol import GatewayHttpProtocol, ServerLimits, head_size, make_protocol, response_bytes
from msa_gateway.uvicorn_cycle import body_waiting, write_whole


class FakeTransport(asyncio.Transport):
    """Collects what the protocol writes; records close and write_eof."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closing = False
        self.eof = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer 200 with the path and the body length."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = orjson.dumps({"path": scope["path"], "body": size})
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


def connect(limits: ServerLimits) -> tuple[GatewayHttpProtocol, FakeTransport]:
    """Return a protocol enforcing ``limits`` on a fake connection, on the running loop."""
    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, date_header=False)
    proto = make_protocol(limits)(config, ServerState(), {}, _loop=asyncio.get_running_loop())
    transport = FakeTransport()
    proto.connection_made(transport)
    return proto, transport


async def settle() -> None:
    """Let the application tasks the protocol started run to completion."""
    for _ in range(20):
        await asyncio.sleep(0)


def statuses(out: bytes) -> list[int]:
    """Return the status codes of the responses in ``out``."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", out)]


def request(header_value_len: int, path: bytes = b"/p") -> bytes:
    """Return a GET with a header value of ``header_value_len`` bytes."""
    return b"GET " + path + b" HTTP/1.1\r\nHost: t\r\nX-V: " + b"v" * header_value_len + b"\r\n\r\n"


def parsed_size(header_value_len: int, path: bytes = b"/p") -> int:
    return head_size(b"GET", path, [(b"host", b"t"), (b"x-v", b"v" * header_value_len)])


# --- pure helpers -----------------------------------------------------------------------


def test_limits_defaults_and_validation() -> None:
    limits = ServerLimits()
    assert (limits.max_request_line, limits.max_header_bytes, limits.max_headers, limits.head_timeout) == (
        8192,
        32768,
        100,
        10.0,
    )
    for bad in ({"max_request_line": 0}, {"max_header_bytes": 0}, {"max_headers": 0}, {"head_timeout": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ServerLimits(**bad)


def test_head_size_is_the_canonical_size_on_the_wire() -> None:
    assert head_size(b"GET", b"/abc", []) == len(b"GET /abc HTTP/1.1\r\n\r\n")
    wire = b"POST / HTTP/1.1\r\nhost: example\r\na: \r\n\r\n"
    assert head_size(b"POST", b"/", [(b"host", b"example"), (b"a", b"")]) == len(wire)
    assert parsed_size(10) == len(request(10))


def test_response_bytes_is_a_complete_close_response() -> None:
    raw = response_bytes(431, "headers_too_large", "too big", "rid-1", [(b"server", b"x")])
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 431 Request Header Fields Too Large"
    headers = dict(line.split(b": ", 1) for line in lines[1:])
    assert headers[b"connection"] == b"close" and headers[b"server"] == b"x"
    assert int(headers[b"content-length"]) == len(body)
    assert orjson.loads(body) == {"error": "headers_too_large", "detail": "too big", "request_id": "rid-1"}


async def test_make_protocol_binds_its_limits_to_every_connection() -> None:
    small = ServerLimits(max_headers=5)
    factory = make_protocol(small)
    config = uvicorn.Config(app, lifespan="off", log_config=None)
    proto = factory(config, ServerState(), {}, _loop=asyncio.get_running_loop())
    assert type(proto) is GatewayHttpProtocol and proto.limits is small and factory.limits is small
    # Built without limits (uvicorn given the class itself, until the lifespan binds the settings'): defaults.
    plain = GatewayHttpProtocol(config=config, server_state=ServerState(), app_state={})
    assert plain.limits == ServerLimits() and make_protocol(ServerLimits()).limits is not small


# --- the byte accounting, chunk by chunk ------------------------------------------------

LIMIT = 300
SMALL = ServerLimits(max_request_line=200, max_header_bytes=LIMIT, max_headers=10, head_timeout=30.0)


@pytest.mark.parametrize("over", [0, 1])
async def test_head_at_and_over_the_limit_whatever_the_chunking(over: int) -> None:
    """A head exactly at the limit is served and one byte over is 431, for every split point."""
    value_len = LIMIT - parsed_size(0) + over
    assert parsed_size(value_len) == LIMIT + over
    data = request(value_len)
    for cut in range(1, len(data)):
        proto, transport = connect(SMALL)
        proto.data_received(data[:cut])
        proto.data_received(data[cut:])
        await settle()
        assert statuses(bytes(transport.out)) == ([431] if over else [200]), cut
        assert transport.closing is bool(over) or transport.eof is bool(over)
        proto.connection_lost(None)


async def test_body_bytes_before_a_pipelined_head_do_not_count_against_it() -> None:
    """A chunk holding a large body and then a head at the limit: both requests are served."""
    proto, transport = connect(SMALL)
    body = b"b" * (LIMIT * 4)
    first = b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
    second = request(LIMIT - parsed_size(0))
    proto.data_received(first + body[:10])
    proto.data_received(body[10:] + second[:-10])  # the second head stays incomplete here
    proto.data_received(second[-10:])
    await settle()
    assert statuses(bytes(transport.out)) == [200, 200]
    assert not transport.closing
    proto.connection_lost(None)


async def test_incomplete_head_is_cut_within_one_chunk_of_the_limit() -> None:
    """A header that never ends is refused once the bytes after its first chunk pass the limit."""
    proto, transport = connect(SMALL)
    fed = 0
    proto.data_received(b"GET / HTTP/1.1\r\nX-Endless: ")
    while not transport.out:
        proto.data_received(b"v" * 64)
        fed += 64
        assert fed <= LIMIT + 64
    assert statuses(bytes(transport.out)) == [431]
    assert transport.eof
    proto.data_received(b"v" * 1000)  # after the answer: dropped
    assert statuses(bytes(transport.out)) == [431]
    proto.connection_lost(None)


async def test_incomplete_head_in_the_first_chunk_of_an_idle_connection_is_cut_at_once() -> None:
    """On a fresh or idle keep-alive connection the chunk starts the head: no extra chunk allowed."""
    proto, transport = connect(SMALL)
    proto.data_received(b"GET / HTTP/1.1\r\nX-Endless: " + b"v" * LIMIT)
    assert statuses(bytes(transport.out)) == [431]
    proto.connection_lost(None)
    proto, transport = connect(SMALL)
    proto.data_received(request(0))
    await settle()  # answered: the connection is idle again, keep-alive armed
    proto.data_received(b"GET / HTTP/1.1\r\nX-Endless: " + b"v" * LIMIT)
    assert statuses(bytes(transport.out)) == [200, 431]
    proto.connection_lost(None)


async def test_too_many_headers_counted_exactly() -> None:
    for count, want in ((10, 200), (11, 431)):
        proto, transport = connect(SMALL)
        lines = b"".join(b"H%d: v\r\n" % i for i in range(count - 1))
        proto.data_received(b"GET / HTTP/1.1\r\nHost: t\r\n" + lines + b"\r\n")
        await settle()
        assert statuses(bytes(transport.out)) == [want]
        proto.connection_lost(None)


async def test_request_id_from_the_client_is_kept_when_safe() -> None:
    proto, transport = connect(SMALL)
    proto.data_received(b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nX-Request-ID: abc-123\r\n\r\n")
    body = bytes(transport.out).partition(b"\r\n\r\n")[2]
    assert statuses(bytes(transport.out)) == [414]
    assert orjson.loads(body)["request_id"] == "abc-123"
    proto.connection_lost(None)


async def test_the_gateways_protocol_serves_the_one_write_shortcut_and_the_next_pipelined_request() -> None:
    seen: list[tuple[bool, bool]] = []

    async def whole(scope: dict[str, Any], receive: Any, send: Any) -> None:
        waiting = body_waiting(receive)
        await receive()
        seen.append((waiting, write_whole(send, 200, [(b"content-length", b"2")], b"ok")))

    config = uvicorn.Config(whole, lifespan="off", log_config=None, access_log=False, date_header=False)
    proto = make_protocol(SMALL)(config, ServerState(), {}, _loop=asyncio.get_running_loop())
    transport = FakeTransport()
    proto.connection_made(transport)
    proto.data_received(b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /b HTTP/1.1\r\n\r\n")
    await settle()
    assert seen == [(True, True), (True, True)]
    assert statuses(bytes(transport.out)) == [200, 200]
    proto.connection_lost(None)


@pytest.mark.parametrize("head_alone", [False, True], ids=["head-with-body", "head-then-body"])
async def test_a_large_plain_chunked_body_in_large_reads_is_not_taken_for_oversized_framing(
    head_alone: bool,
) -> None:
    """Reads of 64 KiB of plain 16 KiB chunks (curl's upload) carry no extension: the body goes through whole."""
    proto, transport = connect(ServerLimits())
    data = b"x" * 266_000
    chunks = b"".join(
        b"%x\r\n%b\r\n" % (len(data[i : i + 16384]), data[i : i + 16384]) for i in range(0, len(data), 16384)
    )
    head = b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    stream = chunks + b"0\r\n\r\n"
    if head_alone:  # as after ``Expect: 100-continue``
        proto.data_received(head)
    else:
        stream = head + stream
    for start in range(0, len(stream), 65536):
        proto.data_received(stream[start : start + 65536])
        await asyncio.sleep(0)
    await settle()
    assert statuses(bytes(transport.out)) == [200]
    assert orjson.loads(bytes(transport.out).partition(b"\r\n\r\n")[2]) == {"path": "/up", "body": len(data)}


async def test_oversized_extensions_spread_over_reads_are_refused_after_the_read_that_exceeds() -> None:
    proto, transport = connect(ServerLimits())
    proto.data_received(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(3):  # 3 x 16 KiB of extension in one size line, the body still open
        proto.data_received(b";e=" + b"x" * 16384 if _ else b"5;e=" + b"x" * 16384)
        await asyncio.sleep(0)
    await settle()
    assert statuses(bytes(transport.out)) == [400] and b"chunk extensions and trailers" in bytes(
        transport.out
    )
