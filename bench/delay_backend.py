"""A tiny backend for the balancer and WebSocket benchmarks: ``python -m bench.delay_backend PORT [MS]``.

HTTP: answers 200 ``{"ok":true}`` to any path after MS milliseconds (``X-Backend-Instance``
names the port). WebSocket: echoes every message at once.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import uvicorn


def make_app(port: int, delay: float) -> Any:
    """Return the ASGI app."""
    instance = str(port).encode()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            while True:
                message = await receive()
                if message["type"] != "websocket.receive":
                    return
                text = message.get("text")
                await send(
                    {
                        "type": "websocket.send",
                        **({"text": text} if text is not None else {"bytes": message["bytes"]}),
                    }
                )
        if scope["type"] != "http":
            return
        if delay:
            await asyncio.sleep(delay)
        headers = [(b"content-type", b"application/json"), (b"x-backend-instance", instance)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"ok":true}'})

    return app


def main() -> None:
    """Serve on 127.0.0.1:PORT."""
    port = int(sys.argv[1])
    delay = float(sys.argv[2]) / 1000 if len(sys.argv) > 2 else 0.0
    uvicorn.run(
        make_app(port, delay),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        ws_per_message_deflate=False,
        ws_ping_interval=None,
    )


if __name__ == "__main__":
    main()
