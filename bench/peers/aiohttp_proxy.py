"""The ``aiohttp-proxy`` peer: a bare ASGI callable forwarding to the backends through one aiohttp session.

This is today's best off-the-shelf Python proxy per /work/shared/PERFORMANCE.md: no framework on the request
path, one shared ``aiohttp.ClientSession`` (keep-alive pool of 64 per backend), backends in round robin, the
response body streamed back chunk by chunk. The request body is read whole before forwarding (the benchmark's
bodies are 1 KiB); no retries, limits, metrics or logs. Started by uvicorn as a factory
(``bench.peers.aiohttp_proxy:create_app``) with the backends in ``BENCH_UPSTREAMS`` (``host:port,host:port``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import aiohttp

from bench.peers import UPSTREAMS_ENV
from bench.peers.bare_asgi import Receive, Scope, Send

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host"}
)


def parse_upstreams(value: str) -> list[str]:
    """Turn ``host:port,host:port`` into base URLs; fail naming the variable when it is empty or malformed."""
    out = []
    for item in (v.strip() for v in value.split(",")):
        host, sep, port = item.rpartition(":")
        if not item or not sep or not host or not port.isdigit():
            raise SystemExit(f"{UPSTREAMS_ENV} needs host:port[,host:port...], got {value!r}")
        out.append(f"http://{host}:{port}")
    return out


class AiohttpProxy:
    """The ASGI app: the session is made at lifespan start-up (it needs the running loop)."""

    def __init__(self, upstreams: list[str]) -> None:
        self.upstreams: Iterator[str] = itertools.cycle(upstreams)
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the lifespan protocol and forward every HTTP request."""
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        elif scope["type"] == "http":
            await self.forward(scope, receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        """Open the shared session at start-up, close it at shutdown."""
        await receive()  # lifespan.startup
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=64, ttl_dns_cache=None)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await self.session.close()
        await send({"type": "lifespan.shutdown.complete"})

    async def forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the request to the next backend and stream its answer back."""
        assert self.session is not None, "lifespan start-up did not run"
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        url = next(self.upstreams) + scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode("latin-1")
        async with self.session.request(
            scope["method"],
            url,
            headers=[(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP],
            data=body or None,
            allow_redirects=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        ) as resp:
            await send(
                {
                    "type": "http.response.start",
                    "status": resp.status,
                    "headers": [
                        (k, v) for k, v in resp.raw_headers if k.decode("latin-1").lower() not in HOP_BY_HOP
                    ],
                }
            )
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})


def create_app() -> AiohttpProxy:
    """Build the app from ``BENCH_UPSTREAMS`` (uvicorn ``--factory``)."""
    return AiohttpProxy(parse_upstreams(os.environ.get(UPSTREAMS_ENV, "")))
