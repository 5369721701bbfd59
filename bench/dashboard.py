"""What open live dashboards cost the gateway: CPU of the process, and latency of the requests it proxies.

    .venv/bin/python -m bench.dashboard [--duration 30] [--clients 20] [--rate 200] [--rounds 1]

One gateway process (with ``ADMIN_PORT``) in front of one uvicorn backend; four phases of
``--duration`` seconds each: idle without and with ``--clients`` subscribers on
``/dashboard/events``, then an open-loop load of ``--rate`` req/s (``bench.openloop``) without and
with them, ``--rounds`` times. Per phase: the gateway's CPU (user + system, % of one core, from
/proc), events received, and under load the requests' p50/p99 and the gateway's CPU per request;
then the medians. First, in this process, what one tick of the producer costs for a few registry
sizes (building and serialising one event); ``--registry 200x10`` adds that many unreachable,
unprobed instances to the gateway's registry, so every event carries them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from tests.support.backend import BackendProcess
from tests.support.gateway import GatewayProcess
from tests.support.procs import free_port, wait_port

from bench.openloop import OpenLoop, PhaseStats, Stream, phase_stats
from bench.procs import cpu_seconds
from msa_gateway.runtime import Runtime
from msa_gateway.settings import Settings, parse_config


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


def filler(services: int, instances: int) -> dict[str, Any]:
    """Return ``services`` more services of ``instances`` unreachable instances each, never probed."""
    return {
        f"filler{s}": {
            "instances": [{"host": "127.0.0.1", "port": 1 + i} for i in range(instances)],
            "health_check": {"path": None},
        }
        for s in range(services)
    }


async def run(duration: float, clients: int, rate: float, rounds: int, extra: dict[str, Any]) -> list[Phase]:
    """Start backend and gateway, measure the four phases ``rounds`` times, stop everything.

    Odd rounds measure "with dashboards" before "without", so a drift of the machine's load
    over the run does not favour one side.
    """
    admin = free_port()
    phases: list[Phase] = []
    with BackendProcess("dash") as backend:
        api = {"instances": [{"host": "127.0.0.1", "port": backend.port}]}
        config = {"services": {"api": api, **extra}}
        with GatewayProcess(config, None, ADMIN_PORT=str(admin), LOG_LEVEL="warning") as gw:
            wait_port(admin)
            events_url = f"http://127.0.0.1:{admin}/dashboard/events"
            for r in range(rounds):
                for loaded in (False, True):
                    order = (0, clients) if r % 2 == 0 else (clients, 0)
                    for n in order:
                        label = f"{rate:g} req/s" if loaded else "idle"
                        label += f", {n} dashboards" if n else ", no dashboard"
                        async with contextlib.AsyncExitStack() as stack:
                            counts = await stack.enter_async_context(subscribers(events_url, n))
                            load = None
                            if loaded:
                                stream = Stream("GET", "GET", "/api/items", rate)
                                load = await stack.enter_async_context(OpenLoop(gw.url, [stream], duration))
                            phases.append(await measure(label, gw.pid(), duration, counts, load))
    return phases


def median_of(phases: Sequence[Phase], name: str, value: Callable[[Phase], float]) -> float:
    """Return the median of ``value`` over the phases called ``name``."""
    return statistics.median(value(p) for p in phases if p.name == name)


def tick_cost(services: int, instances: int, ticks: int = 200) -> float:
    """Return the microseconds one producer tick takes for ``services`` x ``instances`` (in-process)."""
    config = {"services": filler(services, instances)}

    async def measure_ticks() -> float:
        rt = Runtime(Settings(_env_file=None), parse_config(config, "bench.yaml"))  # type: ignore[call-arg]
        rt.apply(rt.provider.services())  # type: ignore[attr-defined]
        for name in rt.snapshot.services:
            rt.metrics.requests.count(name, "GET", 200)
            rt.metrics.requests.histogram(name).observe(0.003)
        started = time.perf_counter()
        for _ in range(ticks):
            rt.live.publish()
        return (time.perf_counter() - started) / ticks * 1e6

    return asyncio.run(measure_ticks())


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the options, run the phases and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--registry", default="0x0", help="SxI: S more services of I instances each (a bigger event)"
    )
    args = parser.parse_args(argv)
    more, _, each = args.registry.partition("x")
    for services, instances in ((2, 2), (50, 4), (200, 10)):
        cost = tick_cost(services, instances)
        print(f"one tick, {services} services x {instances} instances: {cost:8.1f} us")
    extra = filler(int(more), int(each or 0))
    phases = asyncio.run(run(args.duration, args.clients, args.rate, args.rounds, extra))
    for phase in phases:
        print(phase.row())
    cpu = {p.name: median_of(phases, p.name, lambda q: q.cpu_percent) for p in phases}
    names = list(cpu)
    idle = (
        cpu[names[1]] - cpu[names[0]] if names[0].endswith("no dashboard") else cpu[names[0]] - cpu[names[1]]
    )
    loaded = [n for n in names if not n.startswith("idle")]
    without = next(n for n in loaded if n.endswith("no dashboard"))
    with_ = next(n for n in loaded if n != without)
    busy = cpu[with_] - cpu[without]
    print(
        f"{args.clients} dashboards cost (medians of {args.rounds} rounds): idle {idle:+.2f} % of a core,"
        f" under load {busy:+.2f} % of a core"
    )
    for name in (without, with_):
        p99 = median_of(phases, name, lambda q: q.load.p99 * 1000 if q.load else 0.0)
        p50 = median_of(phases, name, lambda q: q.load.p50 * 1000 if q.load else 0.0)
        us = median_of(phases, name, lambda q: q.cpu_us_per_request)
        print(f"{name}: p50 {p50:.2f} ms, p99 {p99:.2f} ms, gateway CPU {us:.1f} us/request (medians)")


if __name__ == "__main__":
    main()
