"""The proxy forwards method, raw path, query, headers and body byte for byte (real sockets)."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from tests.support.gateway import parse_response, raw_request, serve_gateway, service_yaml
from tests.support.recorder import Recorder, Reply, stream


async def test_raw_path_and_query_forwarded_byte_for_byte() -> None:
    async with (
        Recorder(Reply(200, body=b"ok")) as rec,
        serve_gateway(service_yaml({"svc": [rec.port]})) as gw,
    ):
        target = b"/svc/a%2Fb/c;p=1/%7Euser/%E2%82%AC?q=%20x&q=2&empty=&flag&enc=%2F%3F"
        resp = await raw_request(gw.port, b"GET " + target + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
        status, _, body = parse_response(resp)
        assert (status, body) == (200, b"ok")
        req = await rec.next_request()
        assert req.target == target[len(b"/svc") :]
        assert req.method == b"GET"


@pytest.mark.parametrize(
    ("path", "expected"),
    [(b"/svc", b"/"), (b"/svc/", b"/"), (b"/svc?x=1", b"/?x=1"), (b"/svc//double", b"//double")],
)
async def test_service_root_and_edge_paths(path: bytes, expected: bytes) -> None:
    async with (
        Recorder(Reply(200, body=b"ok")) as rec,
        serve_gateway(service_yaml({"svc": [rec.port]})) as gw,
    ):
        resp = await raw_request(gw.port, b"GET " + path + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert parse_response(resp)[0] == 200
        assert (await rec.next_request()).target == expected


@pytest.mark.parametrize(
    "path",
    [
        b"/svc/../other/x",
        b"/svc/a/../../x",
        b"/svc/%2e%2e/x",
        b"/svc/%2E%2e/x",
        b"/svc/a%2f..%2fb",
        b"/svc/a%2F%2E%2E",
        b"/svc/..",
        b"/svc/a\\..\\b",
        b"/svc/a%5c..%5cb",
    ],
)
async def test_dot_segments_rejected_with_400_and_never_forwarded(path: bytes) -> None:
    async with (
        Recorder(Reply(200, body=b"ok")) as rec,
        serve_gateway(service_yaml({"svc": [rec.port]})) as gw,
    ):
        resp = await raw_request(gw.port, b"GET " + path + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
        status, _, body = parse_response(resp)
        assert status == 400
        doc = orjson.loads(body)
        assert doc["error"] == "bad_request" and doc["request_id"]
        assert rec.requests == []


async def test_dots_inside_names_are_not_dot_segments() -> None:
    async with (
        Recorder(Reply(200, body=b"ok")) as rec,
        serve_gateway(service_yaml({"svc": [rec.port]})) as gw,
    ):
        resp = await raw_request(gw.port, b"GET /svc/file..txt/.well-known/a.b HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert parse_response(resp)[0] == 200
        assert (await rec.next_request()).target == b"/file..txt/.well-known/a.b"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "PROPFIND"])
async def test_every_method_is_forwarded(method: str) -> None:
    async with (
        Recorder(Reply(200, body=b"hello")) as rec,
        serve_gateway(service_yaml({"svc": [rec.port]})) as gw,
    ):
        async with aiohttp.ClientSession() as client:
            async with client.request(
                method, f"{gw.url}/svc/m", data=b"x" if method != "HEAD" else None
            ) as r:
                assert r.status == 200
                assert await r.read() == (b"" if method == "HEAD" else b"hello")
        req = await rec.next_request()
        assert req.method == method.encode()


async def test_request_body_forwarded_exactly_with_content_length() -> None:
    body = bytes(range(256)) * 4099
    async with (
        Recorder(Reply(201, body=b"made")) as rec,
        serve_gateway(service_yaml({"svc": [rec.port]})) as gw,
    ):
        async with aiohttp.ClientSession() as client:
            async with client.post(f"{gw.url}/svc/upload", data=body) as r:
                assert r.status == 201
        req = await rec.next_request()
        assert req.body == body
        assert req.header("content-length") == str(len(body)).encode()
        assert not req.chunked


async def test_chunked_request_body_stays_chunked() -> None:
    async def gen() -> AsyncIterator[bytes]:
        for i in range(5):
            yield f"part-{i};".encode()
            await asyncio.sleep(0.01)

    async with (
        Recorder(Reply(200, body=b"ok")) as rec,
        serve_gateway(service_yaml({"svc": [rec.port]})) as gw,
    ):
        async with aiohttp.ClientSession() as client:
            async with client.post(f"{gw.url}/svc/c", data=gen()) as r:
                assert r.status == 200
        req = await rec.next_request()
        assert req.chunked
        assert req.body == b"".join(f"part-{i};".encode() for i in range(5))
        assert req.header("content-length") is None


async def test_chunked_response_stays_chunked_and_streams() -> None:
    reply = Reply(
        200, headers=[("Content-Type", "text/plain")], body=stream([b"one,", b"two,", b"three"], 0.05)
    )
    async with Recorder(reply) as rec, serve_gateway(service_yaml({"svc": [rec.port]})) as gw:
        resp = await raw_request(gw.port, b"GET /svc/s HTTP/1.1\r\nHost: gw\r\n\r\n")
        status, headers, body = parse_response(resp)
        assert status == 200
        assert (b"transfer-encoding", b"chunked") in headers
        assert body == b"one,two,three"


async def test_content_encoding_passes_through_untouched() -> None:
    raw = gzip.compress(b"compressed payload " * 100)
    reply = Reply(200, headers=[("Content-Encoding", "gzip"), ("Content-Type", "text/plain")], body=raw)
    async with Recorder(reply) as rec, serve_gateway(service_yaml({"svc": [rec.port]})) as gw:
        resp = await raw_request(gw.port, b"GET /svc/z HTTP/1.1\r\nHost: gw\r\nAccept-Encoding: gzip\r\n\r\n")
        status, headers, body = parse_response(resp)
        assert status == 200 and body == raw
        assert (b"content-encoding", b"gzip") in headers
        assert (await rec.next_request()).header("accept-encoding") == b"gzip"


async def test_upstream_status_and_empty_bodies() -> None:
    async with Recorder(Reply(204)) as rec, serve_gateway(service_yaml({"svc": [rec.port]})) as gw:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{gw.url}/svc/nothing") as r:
                assert r.status == 204
                assert await r.read() == b""
            rec.respond(Reply(418, body=b"teapot"))
            async with client.get(f"{gw.url}/svc/tea") as r:
                assert r.status == 418
                assert await r.read() == b"teapot"
