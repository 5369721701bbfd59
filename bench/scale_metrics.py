"""Scale scenario: ``/metrics`` of a large registry scraped in a loop while light traffic is proxied.

``python -m bench.scale_metrics [--services 2000] [--traffic-share 0.5] [--rate 200] [--seconds 5]
[--rounds 3] [--scrape-interval 0] [--env KEY=VALUE] [--command CMD]``

The gateway (a real process) registers ``--services`` services of 1 to 10 instances each (spread
over ten backend processes, active health checks off so probes cost nothing here). One request
goes to each service of the ``--traffic-share`` first, so their histograms exist; then a light
open-loop load (``--rate`` requests/s over those services) runs ``--seconds`` without scrapes
(baseline) and ``--seconds`` while a scraper (its own process) fetches ``/metrics``, alternating
the Prometheus text format and OpenMetrics, one scrape starting every ``--scrape-interval``
seconds (0: back to back); ``--rounds`` pairs of phases. It prints the scrape size and duration
and the proxied latency (p50, p99, max, how many over 20 ms) of the baseline requests and of the
requests that overlapped a scrape (both clocks are the system's monotonic clock). The promise
(issue 16): at 2,000 services no proxied request waits more than 20 ms during a scrape.
``--command`` runs another build of the gateway (before/after).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import http.client
import itertools
import os
import random
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.gateway import GatewayLaunch, gateway_command, start_gateway, write_config
from bench.procs import Proc, free_port, start

BACKENDS = 10
SLOW_MS = 20.0
OPENMETRICS = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3"


def registry(services: int, ports: Sequence[int], seed: int = 1) -> dict[str, Any]:
    """Return the YAML document: ``services`` services of 1 to len(ports) instances, no active checks."""
    rng = random.Random(seed)
    doc: dict[str, Any] = {}
    for i in range(services):
        count = rng.randint(1, len(ports))
        doc[f"svc{i:05d}"] = {
            "instances": [{"host": "127.0.0.1", "port": p} for p in ports[:count]],
            "health_check": {"path": None},
        }
    return {"services": doc}


Window = tuple[float, float]  # start and end, time.perf_counter() (CLOCK_MONOTONIC: any process)


@dataclass(frozen=True, slots=True)
class Latencies:
    """Proxied requests of one phase: (start, milliseconds) each, and how many failed."""

    samples: tuple[tuple[float, float], ...]
    failed: int

    def __add__(self, other: Latencies) -> Latencies:
        return Latencies(self.samples + other.samples, self.failed + other.failed)

    def overlapping(self, windows: Sequence[Window]) -> Latencies:
        """Return the requests that were in flight during one of ``windows``."""
        spans = sorted(windows)
        starts = [a for a, _ in spans]

        def overlaps(start: float, ms: float) -> bool:
            i = bisect.bisect_right(starts, start + ms / 1000)  # windows that began before the request ended
            return any(b > start for _, b in spans[max(0, i - 2) : i])

        return Latencies(tuple(s for s in self.samples if overlaps(*s)), 0)

    def row(self) -> str:
        """Return ``n, p50, p99, max, over 20 ms`` as one line."""
        s = sorted(ms for _, ms in self.samples)
        if not s:
            return "no requests"
        p99 = s[min(len(s) - 1, int(len(s) * 0.99))]
        slow = sum(1 for v in s if v > SLOW_MS)
        return (
            f"{len(s)} requests, {self.failed} failed: p50 {statistics.median(s):.1f} ms, "
            f"p99 {p99:.1f} ms, max {s[-1]:.1f} ms, over {SLOW_MS:.0f} ms: {slow}"
        )


async def load(
    session: aiohttp.ClientSession, base: str, names: Sequence[str], rate: float, seconds: float
) -> Latencies:
    """Send ``rate`` GETs a second (open loop) to random services of ``names`` for ``seconds``."""
    rng = random.Random(7)
    out: list[tuple[float, float]] = []
    failed = 0

    async def one(name: str) -> None:
        nonlocal failed
        t0 = time.perf_counter()
        try:
            async with session.get(f"{base}/{name}/x") as r:
                await r.read()
                ok = r.status == 200
        except aiohttp.ClientError:
            ok = False
        if ok:
            out.append((t0, (time.perf_counter() - t0) * 1000))
        else:
            failed += 1

    tasks: list[asyncio.Task[None]] = []
    start_at = time.perf_counter()
    for k in range(int(rate * seconds)):
        delay = start_at + k / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(rng.choice(names))))
    await asyncio.gather(*tasks)
    return Latencies(tuple(out), failed)


@dataclass(slots=True)
class Scrapes:
    """What the scraper saw: bytes and (start, end) of each scrape, by format."""

    sizes: dict[str, list[int]] = field(default_factory=lambda: {"text": [], "openmetrics": []})
    windows: dict[str, list[Window]] = field(default_factory=lambda: {"text": [], "openmetrics": []})

    def extend(self, other: Scrapes) -> None:
        """Add the scrapes of another phase."""
        for fmt in other.windows:
            self.sizes[fmt].extend(other.sizes[fmt])
            self.windows[fmt].extend(other.windows[fmt])

    def all_windows(self) -> list[Window]:
        """Return every scrape's (start, end)."""
        return [w for windows in self.windows.values() for w in windows]

    def rows(self) -> list[str]:
        """Return one line per format."""
        out = []
        for fmt, windows in self.windows.items():
            if windows:
                times = [b - a for a, b in windows]
                out.append(
                    f"{fmt}: {len(times)} scrapes, {max(self.sizes[fmt]) / 1e6:.2f} MB, "
                    f"median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms"
                )
        return out


def scrape_forever(base: str, interval: float) -> None:
    """Scrape ``/metrics`` every ``interval`` s (0: back to back), alternating text and OpenMetrics.

    Runs in its own process (``--scraper``) so reading megabytes never delays the load's client;
    prints ``format bytes start end`` per scrape.
    """
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    for turn in itertools.count():
        fmt = ("text", "openmetrics")[turn % 2]
        t0 = time.perf_counter()
        conn.request("GET", "/metrics", headers={"Accept": OPENMETRICS} if fmt == "openmetrics" else {})
        body = conn.getresponse().read()
        t1 = time.perf_counter()
        print(fmt, len(body), t0, t1, flush=True)
        time.sleep(max(0.0, interval - (t1 - t0)))


async def scraping(base: str, interval: float, stop: asyncio.Event) -> Scrapes:
    """Run the scraper process until ``stop``; return what it saw."""
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "bench.scale_metrics", "--scraper", base, "--scrape-interval", str(interval)),
        stdout=asyncio.subprocess.PIPE,
    )
    await stop.wait()
    proc.terminate()
    out, _ = await proc.communicate()
    result = Scrapes()
    for row in out.decode().splitlines():
        fmt, size, start, end = row.split()
        result.sizes[fmt].append(int(size))
        result.windows[fmt].append((float(start), float(end)))
    return result


@dataclass(frozen=True, slots=True)
class Shape:
    """What the scenario loads: services, the share with traffic, the load, the phases, the scrapes."""

    services: int
    share: float
    rate: float
    seconds: float
    rounds: int
    interval: float


async def measure(port: int, shape: Shape) -> None:
    """Warm the traffic services, then alternate baseline and scrape phases and print the figures.

    Alternating spreads the noise of a shared machine over both kinds of phase alike.
    """
    base = f"http://127.0.0.1:{port}"
    names = [f"svc{i:05d}" for i in range(int(shape.services * shape.share))]
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:
        sem = asyncio.Semaphore(32)

        async def warm(name: str) -> None:
            async with sem, session.get(f"{base}/{name}/x") as r:
                await r.read()

        await asyncio.gather(*(warm(n) for n in names))
        baseline = during = Latencies((), 0)
        scrapes = Scrapes()
        for _ in range(shape.rounds):
            baseline += await load(session, base, names, shape.rate, shape.seconds)
            stop = asyncio.Event()
            scraper = asyncio.create_task(scraping(base, shape.interval, stop))
            during += await load(session, base, names, shape.rate, shape.seconds)
            stop.set()
            scrapes.extend(await scraper)
    every = f"every {shape.interval:g} s" if shape.interval else "back to back"
    print(f"registry: {shape.services} services, {len(names)} with traffic; load {shape.rate:.0f} req/s")
    print("machine load average (1, 5, 15 min): " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    print(f"baseline (no scrape):      {baseline.row()}")
    print(f"overlapping a scrape ({every}): {during.overlapping(scrapes.all_windows()).row()}")
    for row in scrapes.rows():
        print(f"scrape {row}")


def main(argv: Sequence[str] | None = None) -> None:
    """Start the backends and the gateway, measure, stop everything."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=2000)
    parser.add_argument(
        "--traffic-share", type=float, default=0.5, help="share of services that get requests"
    )
    parser.add_argument("--rate", type=float, default=200.0, help="proxied requests per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=3, help="baseline + scrape phase pairs")
    parser.add_argument("--command", help="the gateway command (default: this checkout's msa-gateway run)")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the gateway (repeatable)")
    parser.add_argument("--scrape-interval", type=float, default=0.0, help="seconds from scrape to scrape")
    parser.add_argument("--scraper", metavar="BASE_URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scraper:
        scrape_forever(args.scraper, args.scrape_interval)
        return
    env = dict(pair.split("=", 1) for pair in args.env)
    command = tuple(shlex.split(args.command)) if args.command else gateway_command()
    with tempfile.TemporaryDirectory(prefix="scale-metrics-") as tmp:
        work = Path(tmp)
        ports = [free_port() for _ in range(BACKENDS)]
        procs: list[Proc] = [
            start(f"backend-{p}", [sys.executable, "-m", "bench.delay_backend", str(p)], work) for p in ports
        ]
        try:
            for proc, p in zip(procs, ports, strict=True):
                proc.wait_port(p)
            config = write_config(work, registry(args.services, ports))
            port = free_port()
            t0 = time.perf_counter()
            gateway = start_gateway(
                work,
                config,
                port,
                None,
                GatewayLaunch(command, log_to_file=False, env=env),
                "/health/live",
                120,
            )
            procs.append(gateway)
            print(f"gateway ready in {time.perf_counter() - t0:.1f} s")
            shape = Shape(
                args.services, args.traffic_share, args.rate, args.seconds, args.rounds, args.scrape_interval
            )
            asyncio.run(measure(port, shape))
        finally:
            for proc in procs:
                proc.stop()


if __name__ == "__main__":
    main()
