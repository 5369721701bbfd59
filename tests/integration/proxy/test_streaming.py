"""Bodies stream both ways: SSE events arrive one by one, a client that leaves closes the upstream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp

from tests.support.gateway import serve_gateway, service_yaml
from tests.support.recorder import RecordedRequest, Recorder, Reply


async def _events(n: int, gap: float) -> AsyncIterator[bytes]:
    for i in range(n):
        if i:
            await asyncio.sleep(gap)
        yield f"id: {i}\ndata: {time.monotonic()!r}\n\n".encode()


async def test_sse_events_reach_the_client_one_by_one() -> None:
    reply = Reply(
        200,
        headers=[("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")],
        body=_events(5, 0.2),
    )
    async with Recorder(reply) as rec, serve_gateway(service_yaml({"svc": [rec.port]})) as gw:
        latencies = []
        async with aiohttp.ClientSession() as client, client.get(f"{gw.url}/svc/events") as r:
            assert r.headers["Content-Type"] == "text/event-stream"
            buf = b""
            async for chunk in r.content.iter_any():
                now = time.monotonic()
                buf += chunk
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    sent = float(event.split(b"data: ")[1])
                    latencies.append(now - sent)
        assert len(latencies) == 5
        assert max(latencies) < 0.1, latencies  # far below the 0.2 s gap: nothing is buffered


async def test_client_disconnect_closes_the_upstream_request() -> None:
    async def slow(_: RecordedRequest) -> Reply:
        async def body() -> AsyncIterator[bytes]:
            for i in range(400):
                yield f"chunk {i}\n".encode()
                await asyncio.sleep(0.05)

        return Reply(200, body=body())

    async with Recorder(slow) as rec, serve_gateway(service_yaml({"svc": [rec.port]})) as gw:
        async with aiohttp.ClientSession() as client:
            resp = await client.get(f"{gw.url}/svc/long")
            assert (await resp.content.readany()).startswith(b"chunk 0")
            resp.close()  # the client goes away mid-stream
        deadline = time.monotonic() + 3
        while rec.open_connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert rec.open_connections == 0
        await asyncio.sleep(0)
        assert any('"status":499' in line for line in gw.access_lines())
