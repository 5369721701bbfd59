"""Round robin spreads requests evenly across healthy instances; weights are honoured."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp

from tests.support.gateway import serve_gateway
from tests.support.recorder import Recorder, Reply


async def _spread(weights: list[int], n: int) -> list[int]:
    recs = [Recorder(Reply(200, body=str(i).encode())) for i in range(len(weights))]
    for r in recs:
        await r.start()
    try:
        config = {
            "services": {
                "svc": {
                    "instances": [
                        {"host": "127.0.0.1", "port": r.port, "weight": w}
                        for r, w in zip(recs, weights, strict=True)
                    ],
                    "health_check": {"path": None},
                }
            }
        }
        async with serve_gateway(config) as gw:
            conn = aiohttp.TCPConnector(limit=32)
            async with aiohttp.ClientSession(connector=conn) as client:

                async def one() -> bytes:
                    async with client.get(f"{gw.url}/svc/x") as resp:
                        assert resp.status == 200
                        return await resp.read()

                bodies = await asyncio.gather(*(one() for _ in range(n)))
        counts = Counter(int(b) for b in bodies)
        assert [len(r.requests) for r in recs] == [counts[i] for i in range(len(recs))]
        return [counts[i] for i in range(len(recs))]
    finally:
        for r in recs:
            await r.close()


async def test_round_robin_is_fair_under_concurrency() -> None:
    counts = await _spread([1, 1, 1], 300)
    assert all(99 <= c <= 101 for c in counts), counts


async def test_weights_are_honoured() -> None:
    counts = await _spread([1, 3], 400)
    assert counts == [100, 300], counts
