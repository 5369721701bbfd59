"""A controllable upstream service: a raw ASGI app run by uvicorn as a separate process.

Run it with ``python -m tests.support.backend_app --port N --name X``. Paths:

- ``GET /health``: 200 ``{"status": "ok"}``, or the status set with ``{"health": 503}``.
- ``GET /__count``: ``{"counts": {request_id: n}, "total": n}`` over every data request.
- ``POST /__control``: JSON ``{"health": int, "mode": str, "delay": float, "clear_counts": bool}``;
  answers the resulting state. Modes: ``normal``; ``slow`` (answer after ``delay`` seconds);
  ``hang`` (never answer); ``error500``; ``reset`` (RST the connection without answering).
- ``/stream?n=&interval=``: ``n`` SSE events ``data: <i> <unix time>``, ``interval`` seconds apart.
- ``/bytes?n=&chunk=``: a chunked body of ``n`` pattern bytes (see ``pattern``), made on the fly.
- ``/upload``: hash the request body as it streams in; answer ``size``, ``sha256`` and ``chunks``.
- anything else: echo the request as JSON (``instance``, ``method``, ``path``, ``raw_path``,
  ``query``, ``headers``, ``body_len``, ``body_sha256``).

Modes and ``delay`` apply to data paths only; ``/health`` follows ``health`` alone.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import hashlib
import os
import socket
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import orjson
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MODES = ("normal", "hang", "slow", "error500", "reset")
PATTERN = bytes(range(256)) * 256  # 64 KiB; /bytes repeats it


def pattern(n: int) -> bytes:
    """Return the first ``n`` bytes that ``/bytes?n=`` serves (for small ``n`` in tests)."""
    return (PATTERN * (n // len(PATTERN) + 1))[:n]


def reset_connection(client: tuple[str, int], server: tuple[str, int]) -> bool:
    """Send an RST on this process's TCP connection ``server`` <-> ``client``; return whether found.

    Linux only: the socket is found through ``/proc/self/fd`` and disconnected with
    ``connect(AF_UNSPEC)``, which resets an established TCP connection; the server then sees EOF.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    unspec = struct.pack("=H14x", socket.AF_UNSPEC)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            with socket.socket(fileno=os.dup(fd)) as sock:
                if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
                    continue
                peer, local = sock.getpeername(), sock.getsockname()
        except OSError:
            continue
        if (peer[0], peer[1]) == tuple(client) and local[1] == server[1]:
            return bool(libc.connect(fd, unspec, len(unspec)) == 0)
    return False


class BackendApp:
    """The ASGI app; all state lives on the instance."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.health = 200
        self.mode = "normal"
        self.delay = 1.0
        self.counts: Counter[str] = Counter()
        self.total = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one HTTP request."""
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/health":
            await self._json(send, self.health, {"status": "ok" if self.health < 400 else "unhealthy"})
        elif path == "/__control" and scope["method"] == "POST":
            await self._control(receive, send)
        elif path == "/__count":
            await self._json(send, 200, {"counts": dict(self.counts), "total": self.total})
        else:
            await self._data(scope, receive, send)

    def state(self) -> dict[str, Any]:
        """Return the controllable state."""
        return {"instance": self.name, "health": self.health, "mode": self.mode, "delay": self.delay}

    async def _control(self, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        try:
            req = orjson.loads(body or b"{}")
            if "mode" in req and req["mode"] not in MODES:
                raise ValueError(f"mode must be one of {MODES}")
            self.health = int(req.get("health", self.health))
            self.mode = str(req.get("mode", self.mode))
            self.delay = float(req.get("delay", self.delay))
        except (ValueError, TypeError) as exc:
            await self._json(send, 400, {"error": str(exc)})
            return
        if req.get("clear_counts"):
            self.counts.clear()
            self.total = 0
        await self._json(send, 200, self.state())

    async def _data(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.total += 1
        request_id = _header(scope, b"x-request-id")
        if request_id is not None:
            self.counts[request_id] += 1
        if self.mode == "hang":
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        if self.mode == "reset":
            if reset_connection(scope["client"], scope["server"]):
                while (await receive())["type"] != "http.disconnect":
                    pass
                return
            raise RuntimeError("could not find the connection to reset")
        if self.mode == "slow":
            await asyncio.sleep(self.delay)
        if self.mode == "error500":
            await self._json(send, 500, {"error": "injected", "instance": self.name})
            return
        query = parse_qs(scope["query_string"].decode("latin-1"))
        if scope["path"] == "/stream":
            await self._stream(send, int(query.get("n", ["5"])[0]), float(query.get("interval", ["0.1"])[0]))
        elif scope["path"] == "/bytes":
            await self._bytes(send, int(query.get("n", ["0"])[0]), int(query.get("chunk", ["65536"])[0]))
        else:
            size, digest, chunks = await _hash_body(receive)
            if scope["path"] == "/upload":
                answer: dict[str, Any] = {
                    "instance": self.name,
                    "size": size,
                    "sha256": digest,
                    "chunks": chunks,
                }
            else:
                answer = _echo(scope, self.name, size, digest)
            await self._json(send, 200, answer)

    async def _stream(self, send: Send, n: int, interval: float) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": [*headers, *self._tag()]})
        for i in range(n):
            if i:
                await asyncio.sleep(interval)
            event = f"data: {i} {time.time():.6f}\n\n".encode()
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _bytes(self, send: Send, n: int, chunk: int) -> None:
        headers = [(b"content-type", b"application/octet-stream"), *self._tag()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        block = pattern(max(256, chunk - chunk % 256))  # whole pattern periods: the body is pattern(n)
        left = n
        while left > 0:
            piece = block[: min(left, len(block))]
            left -= len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": left > 0})
        if n <= 0:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _tag(self) -> list[tuple[bytes, bytes]]:
        return [(b"x-backend-instance", self.name.encode())]

    async def _json(self, send: Send, status: int, obj: object) -> None:
        body = orjson.dumps(obj)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": [*headers, *self._tag()]})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _echo(scope: Scope, name: str, size: int, digest: str) -> dict[str, Any]:
    return {
        "instance": name,
        "method": scope["method"],
        "path": scope["path"],
        "raw_path": bytes(scope.get("raw_path") or scope["path"].encode()).decode("latin-1"),
        "query": scope["query_string"].decode("latin-1"),
        "headers": [[bytes(k).decode("latin-1"), bytes(v).decode("latin-1")] for k, v in scope["headers"]],
        "body_len": size,
        "body_sha256": digest,
    }


async def _hash_body(receive: Receive) -> tuple[int, str, int]:
    """Consume the request body; return its size, sha256 and the number of non-empty messages."""
    sha, size, chunks = hashlib.sha256(), 0, 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body = message.get("body", b"")
        if body:
            sha.update(body)
            size += len(body)
            chunks += 1
        if not message.get("more_body", False):
            break
    return size, sha.hexdigest(), chunks


async def _read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return b"".join(parts)


def main(argv: list[str] | None = None) -> None:
    """Parse ``--port``/``--name``/``--host`` and serve until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="backend")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    uvicorn.run(
        BackendApp(args.name),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        proxy_headers=False,
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
