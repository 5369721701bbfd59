"""A WebSocket backend for tests (the ``websockets`` server): echo, refusal, close codes, sudden death."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from http import HTTPStatus

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response


class WsBackend:
    """Serves ``/echo`` (echo; ``die`` aborts the TCP connection, ``close:<code>`` closes with it),
    ``/headers`` (sends the handshake's headers as JSON) and ``/refuse`` (403 with a body)."""

    def __init__(self) -> None:
        self.server: Server | None = None
        self.closed: asyncio.Queue[int | None] = asyncio.Queue()  # close code of each ended connection
        self.open = 0

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @staticmethod
    def _refuse(connection: ServerConnection, request: Request) -> Response | None:
        if request.path.startswith("/refuse"):
            response = connection.respond(HTTPStatus.FORBIDDEN, "not you\n")
            response.headers["X-Backend"] = "refused"
            return response
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        self.open += 1
        assert ws.request is not None
        try:
            if ws.request.path.startswith("/headers"):
                await ws.send(json.dumps([[k, v] for k, v in ws.request.headers.raw_items()]))
            async for message in ws:
                if message == "die":
                    assert ws.transport is not None
                    ws.transport.abort()
                    return
                if isinstance(message, str) and message.startswith("close:"):
                    await ws.close(int(message[6:]), "bye")
                    return
                await ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            self.open -= 1
            await self.closed.put(ws.close_code)


@contextlib.asynccontextmanager
async def ws_backend() -> AsyncIterator[WsBackend]:
    """Run a ``WsBackend`` on a free port of 127.0.0.1 for the block."""
    backend = WsBackend()
    async with serve(
        backend._handle,
        "127.0.0.1",
        0,
        process_request=backend._refuse,
        compression=None,
        ping_interval=None,
        backlog=2048,  # a burst of 1,000 handshakes must not overflow the accept queue
    ) as server:
        backend.server = server
        yield backend
