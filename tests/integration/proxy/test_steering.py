"""p2c_ewma, consistent_hash and sticky through the gateway: the request reaches the balancer, the answer its cookie."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support.gateway import serve_gateway
from tests.support.recorder import Recorder, Reply


@pytest.fixture
async def recorders() -> AsyncIterator[list[Recorder]]:
    recs = [Recorder(Reply(200, body=str(i).encode())) for i in range(3)]
    for r in recs:
        await r.start()
    yield recs
    for r in recs:
        await r.close()


def _config(recs: list[Recorder], **options: Any) -> dict[str, Any]:
    instances = [{"host": "127.0.0.1", "port": r.port} for r in recs]
    return {"services": {"svc": {"instances": instances, "health_check": {"path": None}, **options}}}


async def test_consistent_hash_sends_one_users_requests_to_one_instance(recorders: list[Recorder]) -> None:
    config = _config(recorders, balancer="consistent_hash", balancer_options={"hash_key": "header:X-User"})
    async with serve_gateway(config) as gw, aiohttp.ClientSession() as client:
        owners: dict[str, set[bytes]] = {}
        for n in range(60):
            user = f"user-{n % 12}"
            async with client.get(f"{gw.url}/svc/x", headers={"X-User": user}) as resp:
                owners.setdefault(user, set()).add(await resp.read())
    assert all(len(v) == 1 for v in owners.values())
    assert len({next(iter(v)) for v in owners.values()}) > 1  # 12 users do not all hash to one instance


async def test_sticky_sets_an_opaque_cookie_and_follows_it(recorders: list[Recorder]) -> None:
    config = _config(recorders, balancer="sticky", balancer_options={"cookie": "route"})
    async with serve_gateway(config) as gw, aiohttp.ClientSession() as client:
        async with client.get(f"{gw.url}/svc/x") as resp:
            first = await resp.read()
            set_cookie = resp.headers["Set-Cookie"]
        assert set_cookie.startswith("route=") and "Path=/svc" in set_cookie and "HttpOnly" in set_cookie
        assert "127.0.0.1" not in set_cookie and str(recorders[0].port) not in set_cookie
        token = set_cookie.split(";")[0].split("=", 1)[1]
        bodies = []
        for _ in range(10):
            async with client.get(f"{gw.url}/svc/x", headers={"Cookie": f"route={token}"}) as resp:
                bodies.append(await resp.read())
                assert "Set-Cookie" not in resp.headers  # already names the instance
    assert set(bodies) == {first}


async def test_p2c_ewma_steers_away_from_a_slow_instance(recorders: list[Recorder]) -> None:
    slow = Recorder(Reply(200, body=b"slow", delay=0.2))
    await slow.start()
    try:
        config = _config([*recorders[:2], slow], balancer="p2c_ewma")
        async with serve_gateway(config) as gw, aiohttp.ClientSession() as client:

            async def one() -> bytes:
                async with client.get(f"{gw.url}/svc/x") as resp:
                    return await resp.read()

            for _ in range(5):  # each instance answers a few times: its latency is observed
                await asyncio.gather(*(one() for _ in range(6)))
            later = Counter([await one() for _ in range(60)])
        assert later[b"slow"] <= 2, later  # only a probe, if its cost decayed in the meantime
    finally:
        await slow.close()
