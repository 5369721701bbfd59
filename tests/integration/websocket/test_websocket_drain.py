"""SIGTERM drain closes proxied WebSockets with 1001 on both sides, then the gateway exits 0."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support.gateway import gateway_process, service_yaml
from tests.support.ws_backend import ws_backend


async def test_sigterm_closes_websockets_with_1001_and_exits_cleanly() -> None:
    async with ws_backend() as backend:
        with gateway_process(service_yaml({"chat": [backend.port]}), DRAIN_TIMEOUT="10") as gw:
            clients = [await connect(f"ws://127.0.0.1:{gw.port}/chat/echo") for _ in range(3)]
            for ws in clients:
                await ws.send("hi")
                assert await ws.recv() == "hi"
            assert gw.proc is not None
            gw.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(5):
                for ws in clients:
                    with contextlib.suppress(ConnectionClosed):
                        await ws.recv()
                    assert ws.close_code == 1001
                    assert ws.close_reason == "gateway shutting down"
                codes = [await backend.closed.get() for _ in clients]
            assert codes == [1001, 1001, 1001]
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, gw.proc.wait, 20) == 0
