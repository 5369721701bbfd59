"""The ``bare-asgi`` peer: a raw ASGI callable that answers ``{"ok":true}`` itself, with no upstream.

Run under uvicorn with uvloop and httptools, access log off, one process, it is what one HTTP exchange costs
in Python on this host: the floor every Python proxy sits above (a proxy does two exchanges). Its req/s
moves with the host's CPU like the gateway's does, so gateway/bare-asgi is the host-independent ratio.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BODY = b'{"ok":true}'
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())],
}
END = {"type": "http.response.body", "body": BODY}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the request body to its end (a POST must be consumed), then answer ``{"ok":true}``."""
    if scope["type"] != "http":
        return  # uvicorn runs it with --lifespan off
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send(START)
    await send(END)
