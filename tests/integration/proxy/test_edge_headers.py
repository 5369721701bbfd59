"""Header hygiene at the edge, through a real gateway to a recording instance."""

from __future__ import annotations

import pytest

from msa_gateway.settings import Settings
from tests.support.gateway import parse_response, raw_request, serve_gateway, service_yaml
from tests.support.recorder import RecordedRequest, Recorder, Reply

SPOOF = (
    b"GET /svc/a HTTP/1.1\r\nHost: gw.example\r\nX_Forwarded_For: 6.6.6.6\r\nX-Real_IP: 6.6.6.6\r\n"
    b"HTTP2-Settings: AAMAAABkAAQAAP__\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-Fine: 1\r\n\r\n"
)


def settings(**kw: object) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[arg-type, call-arg]


async def forwarded(request: bytes, **kw: object) -> RecordedRequest:
    """Send ``request`` through a gateway with settings ``kw``; return what the instance received."""
    async with Recorder(Reply(200, body=b"ok")) as rec:
        async with serve_gateway(service_yaml({"svc": [rec.port]}), settings=settings(**kw)) as gw:
            assert parse_response(await raw_request(gw.port, request))[0] == 200
            return await rec.next_request()


async def test_underscore_and_hop_by_hop_request_headers_never_reach_the_instance() -> None:
    req = await forwarded(SPOOF)
    names = {n.lower() for n in req.header_names()}
    assert not names & {b"x_forwarded_for", b"x-real_ip", b"http2-settings", b"proxy-connection", b"upgrade"}
    assert req.header("x-fine") == b"1"
    assert req.header_values("x-forwarded-for") == [b"127.0.0.1"]


async def test_underscores_pass_when_allowed() -> None:
    req = await forwarded(SPOOF, allow_underscores_in_headers=True)
    assert req.header("x_forwarded_for") == b"6.6.6.6"
    assert req.header("http2-settings") is None


REDIRECTING = [
    ("Location", "http://127.0.0.1:{port}/login?next=%2Fa"),
    ("Content-Location", "http://127.0.0.1:{port}/a.json"),
    ("Refresh", "3; url=http://127.0.0.1:{port}/later"),
    ("Link", "<http://127.0.0.1:{port}/other>; rel=next"),
]


@pytest.mark.parametrize("rewrite", [True, False])
async def test_instance_urls_in_redirect_headers_are_rewritten_to_the_client_facing_origin(
    rewrite: bool,
) -> None:
    async with Recorder() as rec:
        rec.respond(Reply(302, headers=[(k, v.format(port=rec.port)) for k, v in REDIRECTING]))
        async with serve_gateway(
            service_yaml({"svc": [rec.port]}), settings=settings(rewrite_redirects=rewrite)
        ) as gw:
            status, headers, _ = parse_response(await raw_request(gw.port, SPOOF))
            got = dict(headers)
            assert status == 302
            if rewrite:
                assert got[b"location"] == b"http://gw.example/svc/login?next=%2Fa"
                assert got[b"content-location"] == b"http://gw.example/svc/a.json"
                assert got[b"refresh"] == b"3; url=http://gw.example/svc/later"
            else:
                assert got[b"location"] == b"http://127.0.0.1:%d/login?next=%%2Fa" % rec.port
            assert (
                got[b"link"] == b"<http://127.0.0.1:%d/other>; rel=next" % rec.port
            )  # not a redirect header


async def test_redirects_to_other_hosts_and_relative_ones_pass_untouched() -> None:
    async with Recorder() as rec:
        rec.respond(
            Reply(301, headers=[("Location", f"http://127.0.0.2:{rec.port}/x"), ("Content-Location", "/y")])
        )
        async with serve_gateway(service_yaml({"svc": [rec.port]})) as gw:
            _, headers, _ = parse_response(await raw_request(gw.port, SPOOF))
            got = dict(headers)
            assert got[b"location"] == f"http://127.0.0.2:{rec.port}/x".encode()
            assert got[b"content-location"] == b"/y"


async def test_h2c_upgrade_request_is_served_as_http_1_1_without_its_upgrade_headers() -> None:
    """``Connection: Upgrade`` + ``Upgrade: h2c`` is not a supported upgrade: plain request, headers dropped."""
    h2c = (
        b"GET /svc/a HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
    )
    req = await forwarded(h2c)
    names = {n.lower() for n in req.header_names()}
    assert not names & {b"upgrade", b"http2-settings", b"connection"}
