"""The server's own writes go after a response the proxy still holds for the end of the turn."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from msa_gateway.protocol import GatewayHttpProtocol, ServerLimits, make_protocol
from msa_gateway.uvicorn_cycle import write_whole
from msa_gateway.write_batch import SHARED_FROM, WriteBatch
from tests.unit.server.test_protocol_limits import FakeTransport, settle, statuses


class Busy:
    in_flight = SHARED_FROM  # enough requests in flight: writes are held


class App:
    """Answers through ``write_whole`` and the batch, then does ``then`` before the turn ends."""

    def __init__(self) -> None:
        self.write_batch = WriteBatch(Busy())
        self.then: Callable[[], None] = lambda: None
        self.held: list[int] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        assert write_whole(send, 200, [(b"content-length", b"2")], b"ok", self.write_batch)
        self.held.append(self.write_batch.held)
        self.then()


def connect(app: App) -> tuple[GatewayHttpProtocol, FakeTransport]:
    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, date_header=False)
    proto = make_protocol(ServerLimits())(config, ServerState(), {}, _loop=asyncio.get_running_loop())
    transport = FakeTransport()
    proto.connection_made(transport)
    return proto, transport


async def test_a_held_response_is_written_at_the_end_of_the_turn() -> None:
    app = App()
    proto, transport = connect(app)
    proto.data_received(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
    await settle()
    assert app.held == [1]
    assert statuses(bytes(transport.out)) == [200]
    proto.connection_lost(None)


async def test_an_answer_to_bad_bytes_goes_after_the_held_response() -> None:
    app = App()
    proto, transport = connect(app)
    app.then = lambda: proto.data_received(b"\x00 not http\r\n\r\n")  # arrives before the turn ends
    proto.data_received(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
    await settle()
    assert app.held == [1]
    assert statuses(bytes(transport.out)) == [200, 400]
    proto.connection_lost(None)


async def test_a_graceful_shutdown_writes_the_held_response_before_closing() -> None:
    app = App()
    proto, transport = connect(app)
    app.then = proto.shutdown
    proto.data_received(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
    await settle()
    assert app.held == [1]
    assert statuses(bytes(transport.out)) == [200] and transport.closing
    proto.connection_lost(None)
