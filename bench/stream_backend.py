"""The streaming benchmark's backend: a raw ASGI app under uvicorn (``python -m bench.stream_backend PORT``).

- ``GET /health``: 200.
- ``GET /download?n=N``: N bytes (``Content-Length``) in 64 KiB chunks from ``chunks(N)``.
- ``POST /upload``: reads the body chunk by chunk, never whole; answers ``{"bytes": n, "sha256": hex}``.
- ``GET /sse?n=50&interval=0.1``: ``n`` server-sent events ``interval`` seconds apart, each
  ``data: {"i": i, "t": <time.time() when sent>}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any
from urllib.parse import parse_qs

CHUNK = 64 * 1024
_BASE = bytes((i * 131 + 17) % 256 for i in range(CHUNK))

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def chunk(index: int, size: int = CHUNK) -> bytes:
    """Return chunk ``index`` of the test stream: its number in 8 bytes, then a fixed pattern."""
    return (index.to_bytes(8, "big") + _BASE[8:])[:size]


def chunks(total: int) -> Iterator[bytes]:
    """Yield the test stream of ``total`` bytes in 64 KiB chunks (each distinct, so reordering shows)."""
    index, left = 0, total
    while left > 0:
        size = min(CHUNK, left)
        yield chunk(index, size)
        index += 1
        left -= size


def stream_sha256(total: int) -> str:
    """Return the sha256 hex digest of the test stream of ``total`` bytes."""
    h = hashlib.sha256()
    for c in chunks(total):
        h.update(c)
    return h.hexdigest()


def _query(scope: Scope) -> dict[str, str]:
    raw = scope.get("query_string", b"").decode("latin-1")
    return {k: v[-1] for k, v in parse_qs(raw).items()}


async def _json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def _download(scope: Scope, send: Send) -> None:
    total = int(_query(scope).get("n", "0"))
    headers = [(b"content-type", b"application/octet-stream"), (b"content-length", str(total).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for c in chunks(total):
        await send({"type": "http.response.body", "body": c, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _upload(receive: Receive, send: Send) -> None:
    h, n = hashlib.sha256(), 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body = message.get("body", b"")
        h.update(body)
        n += len(body)
        if not message.get("more_body", False):
            break
    await _json(send, 200, {"bytes": n, "sha256": h.hexdigest()})


async def _sse(scope: Scope, send: Send) -> None:
    q = _query(scope)
    count, interval = int(q.get("n", "50")), float(q.get("interval", "0.1"))
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    start = time.monotonic()
    for i in range(count):
        delay = start + i * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        event = f"id: {i}\ndata: {json.dumps({'i': i, 't': time.time()})}\n\n"
        await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Serve the streaming endpoints (raw ASGI, no framework)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path, method = scope["path"], scope["method"]
    if path == "/health":
        await _json(send, 200, {"status": "ok"})
    elif path == "/download" and method == "GET":
        await _download(scope, send)
    elif path == "/upload" and method == "POST":
        await _upload(receive, send)
    elif path == "/sse" and method == "GET":
        await _sse(scope, send)
    else:
        await _json(send, 404, {"error": "not found"})


def main(argv: list[str]) -> None:
    """Serve ``app`` on 127.0.0.1:PORT with uvicorn (uvloop, httptools)."""
    import uvicorn

    port = int(argv[1])
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning")


if __name__ == "__main__":
    main(sys.argv)
