"""Many instances on a few real uvicorn backends, a gateway whose own loop stalls: no false flips.

1,000 instance entries share four ``backend_app`` processes (distinct ids, same ports), probed
every 2 s with a 1 s timeout and ``unhealthy_threshold: 1``, the most trigger-happy setting.
Three times the test then blocks the gateway's event loop for 1.2 s just as a probe starts (as
a long registry swap or a CPU-starved host would): the probes out at the time time out, but the
gateway knows it was its own lag, so not one healthy instance flips. A black-holed instance (accepts, never answers)
proves real timeouts still count: once the loop runs freely again it is marked down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from msa_gateway.health.probe import HttpProber, ProbeResult
from msa_gateway.model import Instance
from tests.support.backend import running_backends
from tests.support.gateway import serve_gateway

INSTANCES = 1000
CHECK = {"path": "/health", "interval": 2.0, "timeout": 1.0, "unhealthy_threshold": 1}


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A port that accepts connections (the kernel does) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


class StallingProber(HttpProber):
    """Block the gateway's loop 1.2 s (more than the probe timeout) just as one of ``stalls`` probes starts."""

    def __init__(self, stalls: int) -> None:
        super().__init__()
        self.stalls = stalls

    async def probe(self, instance: Instance, path: str, timeout: float) -> ProbeResult:
        if self.stalls > 0:
            self.stalls -= 1
            asyncio.get_running_loop().call_soon(time.sleep, 1.2)  # once the probe is connecting
        return await super().probe(instance, path, timeout)


async def until(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def flips_down(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.__dict__["instance"]
        for r in caplog.records
        if r.getMessage() == "instance health changed" and r.__dict__.get("to") == "unhealthy"
    ]


async def test_a_stalling_gateway_flips_no_healthy_instance_down_but_a_dead_one_still_goes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with running_backends("a", "b", "c", "d") as backends, black_hole() as dead_port:
        ports = [b.port for b in backends]
        records: list[dict[str, Any]] = [
            {"id": f"i{n}", "host": "127.0.0.1", "port": ports[n % len(ports)]} for n in range(INSTANCES)
        ]
        config = {
            "services": {
                "many": {"instances": records, "health_check": CHECK},
                "dead": {
                    "instances": [{"id": "hole", "host": "127.0.0.1", "port": dead_port}],
                    "health_check": CHECK,
                },
            }
        }
        with caplog.at_level(logging.INFO, logger="msa_gateway.health"):
            async with serve_gateway(config) as gw:
                rt = gw.runtime
                keys = rt.snapshot.services["many"].keys
                await until(lambda: all(rt.health.get(k).status == "healthy" for k in keys), 10.0)
                await until(
                    lambda: rt.health.get(rt.snapshot.services["dead"].keys[0]).status == "unhealthy", 5.0
                )
                caplog.clear()  # the black hole's first verdict came before the stalls
                scheduler = rt.checker.scheduler
                counted_before = scheduler.results["ok"] + scheduler.results["failed"]
                rt.checker.prober = stalling = StallingProber(stalls=3)
                await until(lambda: stalling.stalls == 0, 10.0)
                await until(lambda: bool(flips_down(caplog)) or scheduler.results["inconclusive"] >= 3, 5.0)
                assert flips_down(caplog) == []
                assert scheduler.results["inconclusive"] >= 3  # the stalls spoiled probes: none counted
                await until(
                    lambda: scheduler.results["ok"] + scheduler.results["failed"] > counted_before + 1000,
                    10.0,
                )
                assert all(rt.health.get(k).status == "healthy" for k in keys)
                assert flips_down(caplog) == []
                assert rt.health.get(rt.snapshot.services["dead"].keys[0]).status == "unhealthy"
                assert rt.health.get(rt.snapshot.services["dead"].keys[0]).last_error == "timeout"
