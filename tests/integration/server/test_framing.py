"""Request framing at the edge (RFC 9112 sections 6 and 7): real gateway, real recording upstream.

Every refused request is answered with a JSON error and ``Connection: close``, and the upstream
receives nothing: no request and no connection. A chunked body that breaks after its head went
upstream is answered 400 at once and its upstream connection is aborted, not pooled.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import orjson
import pytest

from msa_gateway.proxy.native import NativeClient
from tests.support.gateway import InProcessGateway, parse_response, raw_request, serve_gateway, service_yaml
from tests.support.recorder import Recorder, Reply

HEAD = b"POST /svc/a HTTP/1.1\r\nHost: gw\r\n"
BODY = b"5\r\nhello\r\n0\r\n\r\n"


@contextlib.asynccontextmanager
async def edge(reply: Reply | None = None) -> AsyncIterator[tuple[InProcessGateway, Recorder]]:
    """A gateway in front of one recording instance of ``svc``."""
    async with Recorder(reply or Reply(200, body=b"fine")) as rec:
        async with serve_gateway(service_yaml({"svc": [rec.port]})) as gw:
            yield gw, rec


async def refused(
    gw: InProcessGateway, rec: Recorder, data: bytes, status: int, error: str
) -> dict[str, str]:
    """Send ``data``; check the JSON answer, that the connection closed, and that nothing went upstream."""
    started = time.monotonic()
    raw = await raw_request(gw.port, data, read_timeout=5)
    assert time.monotonic() - started < 3, "the client had to wait for a timeout"
    got, headers, body = parse_response(raw)
    assert got == status, raw[:300]
    assert (b"connection", b"close") in headers
    assert (b"content-type", b"application/json") in headers
    doc: dict[str, str] = orjson.loads(body)
    assert doc["error"] == error and set(doc) == {"error", "detail", "request_id"}
    assert (b"x-request-id", doc["request_id"].encode()) in headers
    assert rec.requests == [] and rec.connections == 0, "a refused request reached the upstream"
    return doc


TE_501 = {
    "gzip_then_chunked": b"Transfer-Encoding: gzip, chunked\r\n",
    "xchunked": b"Transfer-Encoding: xchunked\r\n",
    "identity": b"Transfer-Encoding: identity\r\n",
}
TE_400 = {
    "chunked_then_identity": b"Transfer-Encoding: chunked, identity\r\n",
    "chunked_twice_in_one_line": b"Transfer-Encoding: chunked, chunked\r\n",
    "two_lines": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    "identity_line_then_chunked_line": b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n",
    "vertical_tab": b"Transfer-Encoding: \x0bchunked\r\n",
    "space_before_colon": b"Transfer-Encoding : chunked\r\n",
    "with_content_length": b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    "content_length_first": b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
}


@pytest.mark.parametrize("line", list(TE_501.values()), ids=list(TE_501))
async def test_transfer_coding_other_than_chunked_is_501_and_nothing_goes_upstream(line: bytes) -> None:
    async with edge() as (gw, rec):
        await refused(gw, rec, HEAD + line + b"\r\n" + BODY, 501, "not_implemented")


@pytest.mark.parametrize("lines", list(TE_400.values()), ids=list(TE_400))
async def test_ambiguous_transfer_encoding_is_400_and_nothing_goes_upstream(lines: bytes) -> None:
    async with edge() as (gw, rec):
        await refused(gw, rec, HEAD + lines + b"\r\n" + BODY, 400, "bad_request")


@pytest.mark.parametrize(
    "lines",
    [b"Content-Length: 5\r\nContent-Length: 6\r\n", b"Content-Length: +5\r\n", b"Content-Length: 5x\r\n"],
    ids=["two_lengths", "plus_sign", "not_a_number"],
)
async def test_bad_content_length_is_400_and_nothing_goes_upstream(lines: bytes) -> None:
    async with edge() as (gw, rec):
        await refused(gw, rec, HEAD + lines + b"\r\nhello!", 400, "bad_request")


@pytest.mark.parametrize("method", [b"POST", b"GET"])
async def test_transfer_encoding_on_http_1_0_is_400(method: bytes) -> None:
    async with edge() as (gw, rec):
        data = method + b" /svc/a HTTP/1.0\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n" + BODY
        doc = await refused(gw, rec, data, 400, "bad_request")
        assert "HTTP/1.0" in doc["detail"]


@pytest.mark.parametrize("value", [b"chunked", b"Chunked", b"CHUNKED", b" chunked ", b"\tchunked"])
async def test_plain_chunked_in_any_case_is_forwarded_re_framed(value: bytes) -> None:
    """RFC 9112 section 7: coding names are case-insensitive; the upstream sees plain ``chunked``."""
    async with edge() as (gw, rec):
        raw = await raw_request(gw.port, HEAD + b"Transfer-Encoding:" + value + b"\r\n\r\n" + BODY)
        assert parse_response(raw)[0] == 200
        req = await rec.next_request()
        assert req.body == b"hello" and req.header_values("transfer-encoding") == [b"chunked"]


BAD_CHUNKS = {
    "bare_lf": b"5\nhello\n0\n\n",
    "no_crlf_after_data": b"5\r\nhelloX0\r\n\r\n",
    "size_overflows": b"FFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n",
    "size_not_hex": b"5g\r\nhello\r\n0\r\n\r\n",
    "size_0x_prefix": b"0x5\r\nhello\r\n0\r\n\r\n",
    "negative_size": b"-5\r\nhello\r\n0\r\n\r\n",
    "invalid_extension": b'5;a"b\r\nhello\r\n0\r\n\r\n',
    "oversized_extension": b"5;a=" + b"x" * 40000 + b"\r\nhello\r\n0\r\n\r\n",
    "oversized_trailers": b"5\r\nhello\r\n0\r\nX-T: " + b"x" * 40000 + b"\r\n\r\n",
    "many_trailers": b"5\r\nhello\r\n0\r\n"
    + b"X-T: "
    + b"y" * 90
    + b"\r\n" * 1
    + b"".join(b"X-T%d: %s\r\n" % (i, b"y" * 90) for i in range(400))
    + b"\r\n",
}


@pytest.mark.parametrize("body", list(BAD_CHUNKS.values()), ids=list(BAD_CHUNKS))
async def test_malformed_chunked_body_is_400_at_once_and_nothing_goes_upstream(body: bytes) -> None:
    async with edge() as (gw, rec):
        await refused(gw, rec, HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + body, 400, "bad_request")


async def test_valid_chunk_extension_and_trailer_pass() -> None:
    """A short extension and a trailer are fine; the trailer never becomes a request header."""
    async with edge() as (gw, rec):
        data = HEAD + b"Transfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n"
        assert parse_response(await raw_request(gw.port, data))[0] == 200
        req = await rec.next_request()
        assert req.body == b"hello" and req.header("x-trailer") is None


async def test_a_large_chunked_upload_sent_at_once_goes_upstream_whole() -> None:
    """266 KB in 16 KiB chunks in one write (the gateway reads it in large pieces): no extension, nothing refused."""
    data = bytes(range(256)) * 1040
    chunks = b"".join(
        b"%x\r\n%b\r\n" % (len(data[i : i + 16384]), data[i : i + 16384]) for i in range(0, len(data), 16384)
    )
    async with edge() as (gw, rec):
        raw = await raw_request(gw.port, HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
        assert parse_response(raw)[0] == 200, raw[:300]
        req = await rec.next_request()
        assert req.body == data


async def test_chunk_breaking_after_the_head_went_upstream_is_400_at_once_and_the_connection_aborted() -> (
    None
):
    """The head and a first chunk reach the instance; a bad chunk then ends the exchange on both sides."""
    async with edge() as (gw, rec):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            writer.write(HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await writer.drain()
            deadline = time.monotonic() + 5
            while rec.open_connections == 0:  # the head is upstream
                assert time.monotonic() < deadline, "the head never reached the instance"
                await asyncio.sleep(0.01)
            started = time.monotonic()
            writer.write(b"zz\r\n")
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(65536), 3)
            assert time.monotonic() - started < 1, "the client waited for a timeout"
            status, headers, body = parse_response(raw)
            assert status == 400 and (b"connection", b"close") in headers
            assert orjson.loads(body)["detail"] == "invalid chunked body"
            assert await asyncio.wait_for(reader.read(65536), 3) == b""  # closed
        finally:
            writer.close()
        client = gw.runtime.upstream
        assert isinstance(client, NativeClient)
        deadline = time.monotonic() + 5
        while rec.open_connections or client.open_count(f"127.0.0.1:{rec.port}"):
            assert time.monotonic() < deadline, "the upstream connection was kept"
            await asyncio.sleep(0.01)
        assert rec.requests == []  # the instance never saw a complete request
        # The next request is served on a fresh connection.
        assert (
            parse_response(await raw_request(gw.port, b"GET /svc/b HTTP/1.1\r\nHost: gw\r\n\r\n"))[0] == 200
        )
        assert rec.connections == 2


RESPONSES = {
    "te_and_length": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "gzip_then_chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "two_lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "bad_chunk_size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "bare_lf_head": b"HTTP/1.1 200 OK\nContent-Length: 3\n\nabc",
}


@pytest.mark.parametrize("raw", list(RESPONSES.values()), ids=list(RESPONSES))
async def test_ambiguous_upstream_response_is_never_relayed(raw: bytes) -> None:
    """Responses are held to the same strictness: the client gets a JSON 502, never the ambiguous bytes."""
    async with edge(Reply.garbage(raw)) as (gw, _):
        answer = await raw_request(gw.port, b"GET /svc/a HTTP/1.1\r\nHost: gw\r\n\r\n", read_timeout=5)
        status, _, body = parse_response(answer)
        assert status == 502, answer
        assert orjson.loads(body)["error"] == "bad_gateway"
