"""Failures become JSON 4xx/5xx with a request id and nothing internal in the body."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from tests.support.gateway import raw_request, serve_gateway, service_yaml
from tests.support.procs import free_port
from tests.support.recorder import Recorder, Reply


def _assert_clean(body: bytes, port: int, error: str) -> dict[str, str]:
    doc = orjson.loads(body)
    assert set(doc) == {"error", "detail", "request_id"}
    assert doc["error"] == error
    text = body.decode()
    assert "127.0.0.1" not in text and "Traceback" not in text
    if port:
        assert str(port) not in text
    return doc  # type: ignore[no-any-return]


async def _get(url: str) -> tuple[int, CIMultiDict[str], bytes]:
    async with aiohttp.ClientSession() as client, client.get(url) as r:
        return r.status, CIMultiDict(r.headers), await r.read()


async def test_unknown_service_is_404() -> None:
    async with serve_gateway(service_yaml({"svc": [free_port()]})) as gw:
        status, headers, body = await _get(f"{gw.url}/nope/x")
        assert status == 404
        doc = _assert_clean(body, 0, "service_not_found")
        assert headers["x-request-id"] == doc["request_id"]


async def test_refused_connection_is_502() -> None:
    port = free_port()
    async with serve_gateway(service_yaml({"svc": [port]})) as gw:
        status, _, body = await _get(f"{gw.url}/svc/x")
        assert status == 502
        _assert_clean(body, port, "bad_gateway")


@pytest.mark.parametrize(
    "reply", [Reply.resetting(), Reply.closing(), Reply.garbage()], ids=["reset", "close", "garbage"]
)
async def test_reset_closed_or_garbage_answer_is_502(reply: Reply) -> None:
    async with Recorder(reply) as rec, serve_gateway(service_yaml({"svc": [rec.port]})) as gw:
        status, _, body = await _get(f"{gw.url}/svc/x")
        assert status == 502
        _assert_clean(body, rec.port, "bad_gateway")


async def test_slow_instance_is_504_after_read_timeout() -> None:
    async with Recorder(Reply.hanging()) as rec:
        async with serve_gateway(
            service_yaml({"svc": [rec.port]}, timeouts={"connect": 1, "read": 0.3})
        ) as gw:
            status, _, body = await _get(f"{gw.url}/svc/slow")
            assert status == 504
            _assert_clean(body, rec.port, "gateway_timeout")


async def test_no_healthy_instance_is_503_with_retry_after() -> None:
    async with serve_gateway({"services": {"empty": {"instances": []}}}) as gw:
        status, headers, body = await _get(f"{gw.url}/empty/x")
        assert status == 503
        assert int(headers["Retry-After"]) > 0
        _assert_clean(body, 0, "no_healthy_instance")


async def test_truncated_response_closes_client_connection_without_stack_trace() -> None:
    async with Recorder(Reply.truncated(b"x" * 10000, 100)) as rec:
        async with serve_gateway(service_yaml({"svc": [rec.port]})) as gw:
            data = await raw_request(gw.port, b"GET /svc/t HTTP/1.1\r\nHost: gw\r\n\r\n", read_timeout=5)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert (
                len(body) < 10000
            )  # the client sees a short body and a closed connection, never a fake success
            assert b"Traceback" not in data
            assert '"error":"protocol_error"' in gw.access_lines()[-1]
