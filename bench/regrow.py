"""Fault scenario 5: Redis restarted empty (no persistence) under load while three instances heartbeat.

The promise (issue 15): no routing table with fewer instances than are alive is ever swapped in,
no request fails and none is answered 404, every outage is logged when it starts and when it
ends, and no POST is delivered twice. The instances run ``msa-gateway register --heartbeat
--ttl 3`` (a heartbeat every second), which registers again when Redis comes back empty; the
gateway holds the instances missing from its first reads (``discovery/recovery.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from tests.support.backend import running_backends
from tests.support.gateway import gateway_process
from tests.support.redis_server import RedisServer
from tests.support.registries import RedisRegistry

from bench.crash import POST_BODY
from bench.faultkit import SERVICE, Check, check_lines, log_records, merged_counts, wait_serving
from bench.openloop import OpenLoop, Shot, Stream

NO_PROBES = {"defaults": {"health_check": {"path": None}}}


@dataclass(frozen=True)
class RegrowReport:
    """What clients and the gateway's log showed across the Redis restarts."""

    rate: float
    post_rate: float
    duration: float
    restarts: Sequence[float]
    grace: float | None
    shots: Sequence[Shot]
    failed: Counter[str]
    swaps: Sequence[int]  # instances in each snapshot swapped in after the first full one
    outages_logged: int
    recoveries_logged: int
    recovering_logged: int
    posts_twice: int

    @property
    def not_found(self) -> int:
        """Return how many requests were answered 404 (the service vanished from the table)."""
        return self.failed.get("GET 404", 0) + self.failed.get("POST 404", 0)

    def checks(self) -> list[Check]:
        """Return each promise of the scenario and whether it held."""
        smallest = min(self.swaps, default=3)
        return [
            (f"failed requests: {sum(self.failed.values())} {dict(self.failed)}", not self.failed),
            (f"requests answered 404: {self.not_found}", self.not_found == 0),
            (
                f"snapshots swapped in after the first full one: {len(self.swaps)}, smallest {smallest} "
                "instances (3 alive)",
                smallest >= 3,
            ),
            (
                f"outages logged: {self.outages_logged} started, {self.recoveries_logged} ended "
                f"({len(self.restarts)} restarts)",
                self.outages_logged == self.recoveries_logged == len(self.restarts),
            ),
            (f"POSTs delivered twice: {self.posts_twice}", self.posts_twice == 0),
        ]


def format_regrow(r: RegrowReport) -> str:
    """Return the report of scenario 5 as text."""
    return "\n".join(
        [
            f"== 5. Redis restarted empty: 3 heartbeating instances (ttl 3 s), {r.rate:g} GET/s + "
            f"{r.post_rate:g} POST/s for {r.duration:g} s, restarts at {_seconds(r.restarts)}, "
            f"DISCOVERY_RECOVERY_GRACE={'auto' if r.grace is None else f'{r.grace:g}'}",
            "checks:",
            *check_lines(r.checks()),
            f"  info  recoveries (instances held while re-registering) logged: {r.recovering_logged}",
        ]
    )


def _seconds(times: Sequence[float]) -> str:
    return ", ".join(f"{t:g}" for t in times) + " s"


async def run_regrow(
    rate: float = 150.0,
    post_rate: float = 50.0,
    duration: float = 20.0,
    restarts: Sequence[float] = (5, 10, 15),
    grace: float | None = None,
) -> RegrowReport:
    """Run scenario 5: load through a gateway on Redis discovery; restart Redis empty at ``restarts``.

    ``grace``: ``DISCOVERY_RECOVERY_GRACE`` (None: automatic; 0 shows what happens without the hold).
    """
    env = {} if grace is None else {"DISCOVERY_RECOVERY_GRACE": str(grace)}
    streams = [
        Stream("GET", "GET", f"/{SERVICE}/items", rate),
        Stream("POST", "POST", f"/{SERVICE}/orders", post_rate, POST_BODY),
    ]
    with tempfile.TemporaryDirectory(prefix="regrow-") as tmp, running_backends("a", "b", "c") as backends:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            async with RedisRegistry.running(server) as registry, contextlib.AsyncExitStack() as stack:
                for backend in backends:
                    stack.enter_context(registry.heartbeat_process(SERVICE, backend.instance(), ttl=3))
                gw = stack.enter_context(gateway_process(NO_PROBES, **registry.env(), **env))
                await wait_serving(gw, healthy=0)
                await _until_instances(gw.url, 3)
                mark = len(gw.output().splitlines())
                async with OpenLoop(gw.url, streams, duration, id_prefix="regrow") as load:
                    run = asyncio.create_task(load.run(), name="faults:regrow-load")
                    for at in restarts:
                        await load.until(at)
                        await asyncio.to_thread(server.stop, kill=True)
                        await asyncio.to_thread(server.start)
                    shots = await run
                output = "\n".join(gw.output().splitlines()[mark:])
                delivered = merged_counts(*(b.counts() for b in backends))
        finally:
            server.stop(kill=True)
    records = log_records(output)
    events = Counter(str(r.get("event")) for r in records)
    posts = {s.request_id for s in shots if s.stream == "POST"}
    return RegrowReport(
        rate=rate,
        post_rate=post_rate,
        duration=duration,
        restarts=tuple(restarts),
        grace=grace,
        shots=shots,
        failed=Counter(f"{s.stream} {s.outcome}" for s in shots if not s.ok),
        swaps=[int(r["instances"]) for r in records if r.get("event") == "registry updated"],
        outages_logged=events["discovery provider failed; keeping the last known instances"],
        recoveries_logged=sum(n for e, n in events.items() if e.startswith("discovery provider recovered")),
        recovering_logged=sum(n for e, n in events.items() if e.startswith("discovery recovering")),
        posts_twice=sum(1 for rid, n in delivered.items() if rid in posts and n > 1),
    )


async def _until_instances(url: str, count: int, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            async with session.get(f"{url}/services") as resp:
                body = await resp.json()
            if len(body.get("services", {}).get(SERVICE, {}).get("instances", [])) >= count:
                return
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{SERVICE} did not reach {count} instances")
