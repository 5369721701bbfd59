"""WebSocket through the gateway, with ``websockets`` on both sides."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from msa_gateway.proxy.websocket import WebSocketProxy
from tests.support.gateway import InProcessGateway, raw_request, serve_gateway, service_yaml
from tests.support.ws_backend import WsBackend, ws_backend


@pytest.fixture
async def backend() -> AsyncIterator[WsBackend]:
    async with ws_backend() as b:
        yield b


def _ws(gw: InProcessGateway, path: str) -> str:
    return f"ws://127.0.0.1:{gw.port}{path}"


async def _closed_code(ws: ClientConnection, within: float = 5.0) -> int | None:
    """Wait for the connection to close (reading what still arrives); return the close code."""
    async with asyncio.timeout(within):
        with pytest.raises(ConnectionClosed):
            while True:
                await ws.recv()
    return ws.close_code


async def test_echo_text_binary_fragmented_and_ping(backend: WsBackend) -> None:
    async with (
        serve_gateway(service_yaml({"chat": [backend.port]})) as gw,
        connect(_ws(gw, "/chat/echo")) as ws,
    ):
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\xff" * 1000)
        assert await ws.recv() == b"\x00\xff" * 1000
        await ws.send(iter(["frag", "ment", "ed ünïcode"]))  # one message in three frames
        assert await ws.recv() == "fragmented ünïcode"
        await ws.send(iter([b"a", b"b"]))
        assert await ws.recv() == b"ab"
        pong = await ws.ping(b"p")
        async with asyncio.timeout(5):
            await pong
        await ws.close()
        assert await backend.closed.get() == 1000  # the client's close reached the instance
        lines = [json.loads(line) for line in gw.access_lines()]
    (line,) = [x for x in lines if x.get("event") == "websocket"]
    assert line["status"] == 101 and line["service"] == "chat" and line["path"] == "/chat/echo"
    payload = len("hello") + len("fragmented ünïcode".encode()) + 2000 + 2
    # Bytes on the wire: the payloads plus frame headers (2-14 bytes a frame; 8 frames, a ping, a close).
    assert payload < line["bytes_in"] <= payload + 14 * 10
    assert payload < line["bytes"] <= payload + 14 * 10
    assert line["duration_ms"] > 0


async def test_upgrade_request_headers_are_the_gateways(backend: WsBackend) -> None:
    extra = {"X-Forwarded-For": "6.6.6.6", "Cookie": "a=1", "X-Custom": "yes", "Keep-Alive": "5"}
    async with serve_gateway(service_yaml({"chat": [backend.port]})) as gw:
        async with connect(
            _ws(gw, "/chat/headers?q=1"), additional_headers=extra, user_agent_header="t/1"
        ) as ws:
            headers: list[list[str]] = json.loads(await ws.recv())
            request_id = ws.response.headers["X-Request-ID"] if ws.response else None
    names = [k.lower() for k, _ in headers]
    got = {k.lower(): v for k, v in headers}
    assert names.count("host") == 1 and got["host"] == f"127.0.0.1:{backend.port}"
    assert got["x-forwarded-for"] == "127.0.0.1"  # the client's own is dropped: not a trusted proxy
    assert got["x-forwarded-prefix"] == "/chat" and got["x-request-id"] == request_id
    assert got["x-custom"] == "yes" and got["cookie"] == "a=1" and "keep-alive" not in got
    assert names.count("user-agent") == 1 and got["user-agent"] == "t/1"  # the client's, none added
    assert got["upgrade"] == "websocket" and got["connection"] == "Upgrade"
    assert "permessage-deflate" in got["sec-websocket-extensions"]  # the handshake is end to end


async def test_refusal_is_relayed_with_status_and_body(backend: WsBackend) -> None:
    async with serve_gateway(service_yaml({"chat": [backend.port]})) as gw:
        with pytest.raises(InvalidStatus) as info:
            await connect(_ws(gw, "/chat/refuse"))
    response = info.value.response
    assert response.status_code == 403 and response.body == b"not you\n"
    assert response.headers["X-Backend"] == "refused"


async def test_unknown_service_and_no_instance_answer_json_errors(backend: WsBackend) -> None:
    async with serve_gateway(service_yaml({"chat": [backend.port]})) as gw:
        with pytest.raises(InvalidStatus) as info:
            await connect(_ws(gw, "/nope/echo"))
        assert info.value.response.status_code == 404
        assert json.loads(info.value.response.body or b"")["error"] == "service_not_found"


async def test_instance_closing_with_a_code_passes_it_on(backend: WsBackend) -> None:
    async with (
        serve_gateway(service_yaml({"chat": [backend.port]})) as gw,
        connect(_ws(gw, "/chat/echo")) as ws,
    ):
        await ws.send("close:4001")
        assert await _closed_code(ws) == 4001
        assert ws.close_reason == "bye"


async def test_instance_dying_mid_connection_closes_the_client_promptly(backend: WsBackend) -> None:
    async with (
        serve_gateway(service_yaml({"chat": [backend.port]})) as gw,
        connect(_ws(gw, "/chat/echo")) as ws,
    ):
        await ws.send("die")
        assert await _closed_code(ws, within=2.0) == 1014


async def test_client_vanishing_closes_the_instance_side(backend: WsBackend) -> None:
    async with serve_gateway(service_yaml({"chat": [backend.port]})) as gw:
        ws = await connect(_ws(gw, "/chat/echo"))
        await ws.send("x")
        assert await ws.recv() == "x"
        assert ws.transport is not None
        ws.transport.abort()  # no close frame: the TCP connection just goes
        async with asyncio.timeout(5):
            assert await backend.closed.get() == 1001
        async with asyncio.timeout(5):
            while gw.runtime.websockets.counts.get("chat"):
                await asyncio.sleep(0.01)


async def test_idle_timeout_closes_both_sides(backend: WsBackend) -> None:
    config = service_yaml({"chat": [backend.port]}, websocket={"idle_timeout": 0.3})
    async with serve_gateway(config) as gw, connect(_ws(gw, "/chat/echo")) as ws:
        await ws.send("x")
        assert await ws.recv() == "x"
        assert await _closed_code(ws) == 1000
        assert ws.close_reason == "idle timeout"
        async with asyncio.timeout(5):
            assert await backend.closed.get() == 1000


async def test_max_connections_refuses_the_next_with_503(backend: WsBackend) -> None:
    config = service_yaml({"chat": [backend.port]}, websocket={"max_connections": 2})
    async with serve_gateway(config) as gw, connect(_ws(gw, "/chat/echo")), connect(_ws(gw, "/chat/echo")):
        with pytest.raises(InvalidStatus) as info:
            await connect(_ws(gw, "/chat/echo"))
        assert info.value.response.status_code == 503
        assert json.loads(info.value.response.body or b"")["error"] == "overloaded"
        metrics = gw.runtime.metrics.render().decode()
        assert 'gateway_websocket_connections{service="chat"} 2.0' in metrics


async def test_a_thousand_concurrent_connections(backend: WsBackend) -> None:
    config = service_yaml(
        {"chat": [backend.port]},
        limits={
            "max_pending_per_service": 2000,
            "max_requests_per_service": 2000,
            "max_requests_per_instance": 2000,
            "max_pending_per_instance": 2000,
        },
    )
    async with serve_gateway(config) as gw:

        async def one(n: int) -> Any:
            async with connect(_ws(gw, "/chat/echo"), open_timeout=60, ping_interval=None) as ws:
                await ws.send(f"m{n}")
                reply = await ws.recv()
                ready.release()
                await go.wait()
                return reply

        ready, go = asyncio.Semaphore(0), asyncio.Event()
        tasks = [asyncio.create_task(one(n)) for n in range(1000)]
        async with asyncio.timeout(90):
            for _ in range(1000):
                await ready.acquire()
        assert gw.runtime.websockets.counts["chat"] == 1000 and backend.open == 1000
        go.set()
        assert await asyncio.gather(*tasks) == [f"m{n}" for n in range(1000)]


async def test_an_upgrade_that_is_not_a_get_is_refused_before_the_instance(backend: WsBackend) -> None:
    async with serve_gateway(service_yaml({"chat": [backend.port]})) as gw:
        head = (
            b"POST /chat/echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        answer = await raw_request(gw.port, head)
    assert answer.startswith(b"HTTP/1.1 400") and b"invalid_upgrade" not in answer.split(b"\r\n\r\n")[0]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "bad_request"
    assert backend.open == 0 and backend.closed.empty()


async def test_a_crash_in_the_proxy_answers_500_and_is_logged(
    backend: WsBackend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def boom(*args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(WebSocketProxy, "_connect", boom)
    async with serve_gateway(service_yaml({"chat": [backend.port]})) as gw:
        with pytest.raises(InvalidStatus) as info:
            await connect(_ws(gw, "/chat/echo"))
    assert info.value.response.status_code == 500
    assert any(r.getMessage() == "websocket application failed" for r in caplog.records)
    assert gw.runtime.websockets.counts["chat"] == 0  # the slot was given back
