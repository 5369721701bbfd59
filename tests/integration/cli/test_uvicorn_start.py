"""``uvicorn msa_gateway.main:app`` keeps the protections of ``msa-gateway run`` (or says it cannot)."""

from __future__ import annotations

import asyncio

import orjson

from tests.support.gateway import GatewayProcess, parse_response, raw_request, service_yaml
from tests.support.recorder import Recorder, Reply

UVICORN = ["-m", "uvicorn", "msa_gateway.main:app", "--host", "127.0.0.1", "--port", "{port}"]
LIMITS = {"MAX_REQUEST_LINE": "100", "MAX_HEADERS": "5", "HEADER_TIMEOUT": "1", "DRAIN_TIMEOUT": "3"}


async def test_plain_uvicorn_enforces_limits_framing_and_trusted_proxies() -> None:
    """Limits from the environment, strict framing, and no uvicorn X-Forwarded-For rewriting."""
    async with Recorder(Reply(200, body=b"fine")) as rec:
        gw = GatewayProcess(service_yaml({"svc": [rec.port]}), argv=UVICORN, **LIMITS)
        try:
            await asyncio.to_thread(gw.start)
            long_url = b"GET /svc/" + b"a" * 120 + b" HTTP/1.1\r\nHost: gw\r\n\r\n"
            status, headers, body = parse_response(await raw_request(gw.port, long_url))
            assert status == 414 and (b"connection", b"close") in headers
            assert orjson.loads(body)["error"] == "uri_too_long"
            te = b"POST /svc/a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
            assert parse_response(await raw_request(gw.port, te))[0] == 501
            many = b"GET /svc/a HTTP/1.1\r\nHost: gw\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(6))
            assert parse_response(await raw_request(gw.port, many + b"\r\n"))[0] == 431
            assert rec.connections == 0
            spoof = b"GET /svc/a HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
            assert parse_response(await raw_request(gw.port, spoof))[0] == 200
            assert (await rec.next_request()).header_values("x-forwarded-for") == [b"127.0.0.1"]
            assert "uvicorn_protocol_replaced" in gw.output()
        finally:
            gw.close()


async def test_uvicorn_without_lifespan_says_the_protections_are_off() -> None:
    """Served without lifespan, the first request logs one line naming what is not enforced."""
    async with Recorder(Reply(200, body=b"fine")) as rec:
        gw = GatewayProcess(service_yaml({"svc": [rec.port]}), argv=[*UVICORN, "--lifespan", "off"])
        try:
            await asyncio.to_thread(gw.start)
            assert (
                parse_response(await raw_request(gw.port, b"GET /svc/a HTTP/1.1\r\nHost: gw\r\n\r\n"))[0]
                == 200
            )
            lines = [ln for ln in gw.output().splitlines() if "client_protections_off" in ln]
            assert len(lines) == 1 and "MAX_REQUEST_LINE" in lines[0] and "msa-gateway run" in lines[0]
        finally:
            gw.close()


async def test_the_seeds_uvicorn_app_main_command_serves_the_gateway_with_its_protections() -> None:
    """``uvicorn app.main:app`` from the repository root, as the original README runs it."""
    seed_argv = ["-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", "{port}"]
    async with Recorder(Reply(200, body=b"fine")) as rec:
        gw = GatewayProcess(service_yaml({"svc": [rec.port]}), argv=seed_argv, MAX_HEADERS="5")
        try:
            await asyncio.to_thread(gw.start)
            ok = await raw_request(gw.port, b"GET /svc/a HTTP/1.1\r\nHost: gw\r\n\r\n")
            assert parse_response(ok)[:3:2] == (200, b"fine")
            many = b"GET /svc/a HTTP/1.1\r\nHost: gw\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(6))
            assert parse_response(await raw_request(gw.port, many + b"\r\n"))[0] == 431
            assert "uvicorn_protocol_replaced" in gw.output()
        finally:
            gw.close()
