"""Header rules both ways: hop-by-hop dropped, X-Forwarded-* set, request ids, cookies kept apart."""

from __future__ import annotations

import aiohttp

from tests.support.gateway import parse_response, raw_request, serve_gateway, service_yaml
from tests.support.recorder import Recorder, Reply

REQUEST = (
    b"GET /svc/h HTTP/1.1\r\n"
    b"Host: api.example.com\r\n"
    b"Connection: keep-alive, X-Secret-Hop\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"X-Secret-Hop: must-not-pass\r\n"
    b"TE: trailers\r\n"
    b"Trailer: X-T\r\n"
    b"Upgrade: h2c\r\n"
    b"Proxy-Authorization: Basic eDp5\r\n"
    b"Proxy-Connection: keep-alive\r\n"
    b"X-Forwarded-For: 6.6.6.6\r\n"
    b"X-Forwarded-Host: evil.example\r\n"
    b"X-Forwarded-Proto: https\r\n"
    b"Forwarded: for=6.6.6.6\r\n"
    b"X-Custom: a\r\n"
    b"X-Custom: b\r\n"
    b"Authorization: Bearer token-123\r\n"
    b"Cookie: session=abc\r\n"
    b"\r\n"
)


async def test_hop_by_hop_and_connection_listed_headers_are_dropped() -> None:
    async with (
        Recorder(Reply(200, body=b"ok")) as rec,
        serve_gateway(service_yaml({"svc": [rec.port]})) as gw,
    ):
        assert parse_response(await raw_request(gw.port, REQUEST))[0] == 200
        req = await rec.next_request()
        names = {n.lower() for n in req.header_names()}
        for hop in (
            b"keep-alive",
            b"x-secret-hop",
            b"te",
            b"trailer",
            b"upgrade",
            b"proxy-authorization",
            b"proxy-connection",
            b"forwarded",
        ):
            assert hop not in names, hop
        assert req.header_values("connection") in ([], [b"keep-alive"])
        # end-to-end headers pass, repeated ones stay repeated and in order
        assert req.header_values("x-custom") == [b"a", b"b"]
        assert req.header("authorization") == b"Bearer token-123"
        assert req.header("cookie") == b"session=abc"


async def test_forwarded_headers_from_untrusted_peer_are_replaced() -> None:
    async with (
        Recorder(Reply(200, body=b"ok")) as rec,
        serve_gateway(service_yaml({"svc": [rec.port]})) as gw,
    ):
        await raw_request(gw.port, REQUEST)
        req = await rec.next_request()
        assert req.header_values("x-forwarded-for") == [b"127.0.0.1"]
        assert req.header("x-forwarded-proto") == b"http"
        assert req.header("x-forwarded-host") == b"api.example.com"
        assert req.header("x-forwarded-prefix") == b"/svc"
        assert req.header("host") == f"127.0.0.1:{rec.port}".encode()


async def test_forwarded_headers_from_trusted_proxy_are_extended() -> None:
    config = service_yaml({"svc": [0]})
    async with Recorder(Reply(200, body=b"ok")) as rec:
        config["services"]["svc"]["instances"][0]["port"] = rec.port
        config["gateway"] = {"trusted_proxies": ["127.0.0.0/8"]}
        async with serve_gateway(config) as gw:
            await raw_request(gw.port, REQUEST)
            req = await rec.next_request()
            assert req.header("x-forwarded-for") == b"6.6.6.6, 127.0.0.1"
            assert req.header("x-forwarded-proto") == b"https"
            assert req.header("x-forwarded-host") == b"evil.example"
            assert req.header("forwarded") == b"for=6.6.6.6"


async def test_pass_host_header_option_keeps_client_host() -> None:
    async with Recorder(Reply(200, body=b"ok")) as rec:
        async with serve_gateway(service_yaml({"svc": [rec.port]}, pass_host_header=True)) as gw:
            await raw_request(gw.port, REQUEST)
            assert (await rec.next_request()).header("host") == b"api.example.com"


async def test_request_id_is_kept_or_minted_and_returned() -> None:
    async with (
        Recorder(Reply(200, body=b"ok")) as rec,
        serve_gateway(service_yaml({"svc": [rec.port]})) as gw,
    ):
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{gw.url}/svc/x", headers={"X-Request-ID": "abc-123"}) as r:
                assert r.headers.getall("x-request-id") == ["abc-123"]
            assert (await rec.next_request()).header_values("x-request-id") == [b"abc-123"]
            async with client.get(f"{gw.url}/svc/x") as r:
                minted = r.headers["x-request-id"]
                assert len(minted) == 32
            assert (await rec.next_request()).header("x-request-id") == minted.encode()
            async with client.get(f"{gw.url}/svc/x", headers={"X-Request-ID": "bad id\twith spaces"}) as r:
                assert r.headers["x-request-id"] != "bad id\twith spaces"


async def test_client_framing_headers_are_not_copied() -> None:
    async with (
        Recorder(Reply(200, body=b"ok")) as rec,
        serve_gateway(service_yaml({"svc": [rec.port]})) as gw,
    ):
        data = (
            b"POST /svc/p HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
        )
        assert parse_response(await raw_request(gw.port, data))[0] == 200
        req = await rec.next_request()
        assert req.body == b"hello"
        assert req.header("expect") is None
        assert req.header_values("transfer-encoding") == [b"chunked"]


async def test_response_keeps_repeated_set_cookie_and_drops_hop_headers() -> None:
    reply = Reply(
        200,
        headers=[
            ("Set-Cookie", "a=1; Path=/"),
            ("Set-Cookie", "b=2; HttpOnly"),
            ("Connection", "X-Up-Hop"),
            ("X-Up-Hop", "secret"),
            ("Keep-Alive", "timeout=3"),
            ("X-Request-ID", "upstream-id"),
            ("Cache-Control", "no-cache"),
        ],
        body=b"ok",
    )
    async with Recorder(reply) as rec, serve_gateway(service_yaml({"svc": [rec.port]})) as gw:
        status, headers, _ = parse_response(
            await raw_request(gw.port, b"GET /svc/c HTTP/1.1\r\nHost: gw\r\nX-Request-ID: mine\r\n\r\n")
        )
        assert status == 200
        assert [v for k, v in headers if k == b"set-cookie"] == [b"a=1; Path=/", b"b=2; HttpOnly"]
        names = [k for k, _ in headers]
        assert b"x-up-hop" not in names and b"keep-alive" not in names
        assert [v for k, v in headers if k == b"x-request-id"] == [b"mine"]
        assert (b"cache-control", b"no-cache") in headers


async def test_cookies_are_never_shared_between_clients() -> None:
    reply = Reply(200, headers=[("Set-Cookie", "session=alice; Path=/")], body=b"ok")
    async with Recorder(reply) as rec, serve_gateway(service_yaml({"svc": [rec.port]})) as gw:
        await raw_request(gw.port, b"GET /svc/login HTTP/1.1\r\nHost: gw\r\n\r\n")
        await raw_request(gw.port, b"GET /svc/other HTTP/1.1\r\nHost: gw\r\n\r\n")
        _, second = await rec.wait_requests(2)
        assert second.header("cookie") is None
