"""Active health checks take a failing instance out of rotation and bring it back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp
import orjson
import pytest

from msa_gateway.registry.snapshot import ServiceRoute
from tests.support.gateway import serve_gateway
from tests.support.recorder import RecordedRequest, Recorder, Reply


class Switch:
    """A recorder handler whose /health status can be flipped."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.health = 200

    async def __call__(self, req: RecordedRequest) -> Reply:
        if req.target == b"/health":
            return Reply(self.health, body=b"h")
        return Reply(200, body=self.name.encode())


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_unhealthy_instance_leaves_rotation_and_returns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="msa_gateway.health")
    a, b = Switch("a"), Switch("b")
    async with Recorder(a) as ra, Recorder(b) as rb:
        config = {
            "services": {
                "svc": {
                    "instances": [
                        {"host": "127.0.0.1", "port": ra.port},
                        {"host": "127.0.0.1", "port": rb.port},
                    ],
                    "health_check": {
                        "path": "/health",
                        "interval": 0.05,
                        "timeout": 1,
                        "unhealthy_threshold": 2,
                        "healthy_threshold": 2,
                    },
                }
            }
        }
        async with serve_gateway(config) as gw, aiohttp.ClientSession() as client:

            def route() -> ServiceRoute:
                return gw.runtime.snapshot.services["svc"]

            await _until(lambda: all(gw.runtime.health.get(k).status == "healthy" for k in route().keys))
            b.health = 503
            await _until(lambda: len(route().eligible) == 1)
            seen = set()
            for _ in range(20):
                async with client.get(f"{gw.url}/svc/x") as r:
                    seen.add(await r.read())
            assert seen == {b"a"}
            async with client.get(f"{gw.url}/services") as r:
                doc = orjson.loads(await r.read())
            states = {i["port"]: i["health"]["status"] for i in doc["services"]["svc"]["instances"]}
            assert states == {ra.port: "healthy", rb.port: "unhealthy"}
            async with client.get(f"{gw.url}/metrics") as r:
                text = (await r.read()).decode()
            assert f'gateway_instance_up{{instance="127.0.0.1:{rb.port}",service="svc"}} 0.0' in text
            b.health = 200
            await _until(lambda: len(route().eligible) == 2)
            seen = set()
            for _ in range(4):
                async with client.get(f"{gw.url}/svc/x") as r:
                    seen.add(await r.read())
            assert seen == {b"a", b"b"}
        changes = [r for r in caplog.records if r.getMessage() == "instance health changed"]
        assert [(r.__dict__["from"], r.__dict__["to"]) for r in changes] == [
            ("healthy", "unhealthy"),
            ("unhealthy", "healthy"),
        ]


@pytest.mark.parametrize("panic_threshold", [0, 50])
async def test_all_unhealthy_fails_fast_or_panics(panic_threshold: float) -> None:
    a = Switch("a")
    a.health = 500
    async with Recorder(a) as ra:
        config = {
            "services": {
                "svc": {
                    "instances": [{"host": "127.0.0.1", "port": ra.port}],
                    "health_check": {"path": "/health", "interval": 0.05, "unhealthy_threshold": 1},
                    "panic_threshold": panic_threshold,
                }
            }
        }
        async with serve_gateway(config) as gw, aiohttp.ClientSession() as client:
            await _until(lambda: not gw.runtime.snapshot.services["svc"].eligible)
            async with client.get(f"{gw.url}/svc/x") as r:
                if panic_threshold == 0:  # fail fast
                    assert r.status == 503
                    assert r.headers["Retry-After"]
                else:  # Envoy's panic mode: below the threshold, balance over every instance
                    assert r.status == 200
                    assert await r.read() == b"a"
            async with client.get(f"{gw.url}/metrics") as r:
                text = (await r.read()).decode()
            expected = "0.0" if panic_threshold == 0 else "1.0"
            assert f'gateway_service_panic{{service="svc"}} {expected}' in text or panic_threshold == 0
