"""What open live dashboards cost the gateway: CPU of the process, and latency of the requests it proxies.

    .venv/bin/python -m bench.dashboard [--duration 30] [--clients 20] [--rate 200]

One gateway process (with ``ADMIN_PORT``) in front of one uvicorn backend; four phases of
``--duration`` seconds each: idle without and with ``--clients`` subscribers on
``/dashboard/events``, then an open-loop load of ``--rate`` req/s (``bench.openloop``) without and
with them. Per phase: the gateway's CPU (user + system, % of one core, from /proc), events
received, and under load the requests' p50/p99 and the gateway's CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import aiohttp
from tests.support.backend import BackendProcess
from tests.support.gateway import GatewayProcess
from tests.support.procs import free_port, wait_port

from bench.openloop import OpenLoop, PhaseStats, Stream, phase_stats
from bench.procs import cpu_seconds


@dataclass(frozen=True, slots=True)
class Phase:
    """One measured phase."""

    name: str
    cpu_percent: float
    events: int
    load: PhaseStats | None = None  # the requests' latency, when the phase sent any
    cpu_us_per_request: float = 0.0

    def row(self) -> str:
        """Return the phase as one line of the report."""
        line = f"{self.name:<26} CPU {self.cpu_percent:6.2f} %  events {self.events:6d}"
        if self.load is not None:
            line += (
                f"  requests {self.load.count:6d}  p50 {self.load.p50 * 1000:6.2f} ms"
                f"  p99 {self.load.p99 * 1000:6.2f} ms  CPU/request {self.cpu_us_per_request:6.1f} us"
            )
        return line


@contextlib.asynccontextmanager
async def subscribers(url: str, count: int) -> AsyncIterator[list[int]]:
    """Keep ``count`` event streams open, each counting the events it reads (``[n] * count``)."""
    counts = [0] * count
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:

        async def read(i: int) -> None:
            async with session.get(url) as resp:
                async for line in resp.content:
                    if line.startswith(b"data:"):
                        counts[i] += 1

        tasks = [asyncio.create_task(read(i), name=f"sse-{i}") for i in range(count)]
        try:
            yield counts
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def measure(name: str, pid: int, duration: float, counts: list[int], load: OpenLoop | None) -> Phase:
    """Run one phase: the gateway's CPU over ``duration`` seconds (and ``load``, when given)."""
    before_events = sum(counts)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    shots = await load.run() if load is not None else await asyncio.sleep(duration, [])
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    events = sum(counts) - before_events
    percent = (cpu1 - cpu0) / (t1 - t0) * 100
    if not shots:
        return Phase(name, percent, events)
    stats = phase_stats(shots, "GET", 0.0, duration)
    per_request = (cpu1 - cpu0) * 1e6 / max(1, len(shots))
    return Phase(name, percent, events, stats, per_request)


async def run(duration: float, clients: int, rate: float) -> list[Phase]:
    """Start backend and gateway, measure the four phases, stop everything."""
    admin = free_port()
    with BackendProcess("dash") as backend:
        config = {"services": {"api": {"instances": [{"host": "127.0.0.1", "port": backend.port}]}}}
        with GatewayProcess(config, None, ADMIN_PORT=str(admin), LOG_LEVEL="warning") as gw:
            wait_port(admin)
            events_url = f"http://127.0.0.1:{admin}/dashboard/events"
            phases = [await measure("idle, no dashboard", gw.pid(), duration, [], None)]
            async with subscribers(events_url, clients) as counts:
                phases.append(await measure(f"idle, {clients} dashboards", gw.pid(), duration, counts, None))
            for label, n in (
                (f"{rate:g} req/s, no dashboard", 0),
                (f"{rate:g} req/s, {clients} dashboards", clients),
            ):
                async with (
                    subscribers(events_url, n) as counts,
                    OpenLoop(gw.url, [Stream("GET", "GET", "/api/items", rate)], duration) as load,
                ):
                    phases.append(await measure(label, gw.pid(), duration, counts, load))
    return phases


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the options, run the phases and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rate", type=float, default=200.0)
    args = parser.parse_args(argv)
    phases = asyncio.run(run(args.duration, args.clients, args.rate))
    for phase in phases:
        print(phase.row())
    idle = phases[1].cpu_percent - phases[0].cpu_percent
    busy = phases[3].cpu_percent - phases[2].cpu_percent
    print(f"{args.clients} dashboards cost: idle {idle:+.2f} % of a core, under load {busy:+.2f} % of a core")


if __name__ == "__main__":
    main()
