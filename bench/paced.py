"""The gateway's CPU at a fixed request rate: what an idle-ish gateway costs, e.g. with ``BUSY_POLL_US``.

wrk sends the next request as soon as an answer arrives, so it measures a gateway that is never
idle. A setting that trades CPU for latency while the gateway waits (``BUSY_POLL_US``) shows its
price only when requests are spaced out: here one keep-alive connection sends GETs on a fixed
schedule (``rate`` a second; late ones go at once) from this process, pinned to the client core
with the nginx backend, and the gateway's CPU time is read from ``/proc`` over the window.

    python -m bench.paced --rates 100,1000,3000 --extra-gateway bp50:BUSY_POLL_US=50

Prints, per gateway and rate: requests answered a second, the gateway's CPU as a share of one
core and per request, and the client-seen latency (p50/p99; this client is Python, so its own
wake-ups are in it: compare gateways with each other, not with wrk's figures).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import nginx
from bench.gateway import GatewayLaunch, gateway_command, gateway_config, start_gateway, write_config
from bench.procs import cpu_seconds, free_port
from bench.stream import percentile
from bench.variants import GatewayVariant, gateway_variants

PATH = "/bench/anything"
READY = "/bench/ready"


@dataclass(frozen=True, slots=True)
class Paced:
    """One gateway at one target rate."""

    name: str
    rate: float
    answered: int
    seconds: float
    cpu: float  # the gateway's CPU seconds over the window
    latencies: tuple[float, ...]  # seconds, send to end of response

    @property
    def cpu_share(self) -> float:
        """The gateway's CPU as a share of one core."""
        return self.cpu / self.seconds

    @property
    def cpu_us_per_request(self) -> float:
        """The gateway's CPU per answered request, in µs."""
        return self.cpu / self.answered * 1e6 if self.answered else 0.0


def content_length(head: bytes) -> int:
    """Return the ``Content-Length`` of a response head (0 when it has none)."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def row(p: Paced) -> str:
    """Format one result as a table row."""
    p50, p99 = (percentile(p.latencies, q) * 1e3 for q in (50, 99))
    return (
        f"{p.name:<14} {p.rate:>8,.0f} {p.answered / p.seconds:>10,.0f} {p.cpu_share:>9.1%} "
        f"{p.cpu_us_per_request:>9,.0f} {p50:>8.3f} {p99:>8.3f}"
    )


HEADER = (
    f"{'gateway':<14} {'rate':>8} {'answered/s':>10} {'CPU/core':>9} "
    f"{'us/req':>9} {'p50 ms':>8} {'p99 ms':>8}"
)


async def drive(port: int, rate: float, seconds: float) -> tuple[int, list[float]]:
    """Send GETs on one connection every ``1 / rate`` s for ``seconds``; return answers and latencies."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET {PATH} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    latencies: list[float] = []
    start = time.perf_counter()
    try:
        while (now := time.perf_counter()) - start < seconds:
            due = start + len(latencies) / rate
            if due > now:
                await asyncio.sleep(due - now)
            sent = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(content_length(head))
            latencies.append(time.perf_counter() - sent)
    finally:
        writer.close()
    return len(latencies), latencies


def measure(variant: GatewayVariant, port: int, pid: int, rate: float, seconds: float) -> Paced:
    """Warm up for a second, then drive ``rate`` for ``seconds`` and read the gateway's CPU."""
    asyncio.run(drive(port, rate, 1.0))
    before = cpu_seconds(pid)
    answered, latencies = asyncio.run(drive(port, rate, seconds))
    return Paced(variant.name, rate, answered, seconds, cpu_seconds(pid) - before, tuple(latencies))


def run_variant(
    variant: GatewayVariant, workdir: Path, backends: tuple[int, int], args: argparse.Namespace
) -> list[Paced]:
    """Start one gateway on the proxy core and measure it at every rate."""
    port = free_port()
    config = write_config(workdir, gateway_config(backends))
    launch = GatewayLaunch(variant.command, env=variant.env)
    gateway = start_gateway(workdir, config, port, args.proxy_core, launch, READY)
    try:
        return [measure(variant, port, gateway.pid, rate, args.seconds) for rate in args.rates]
    finally:
        gateway.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.paced", description=__doc__.splitlines()[0])
    p.add_argument(
        "--rates", type=lambda s: [float(r) for r in s.split(",")], default=[100.0, 1000.0, 3000.0]
    )
    p.add_argument("--seconds", type=float, default=5.0, help="measured window per rate (5)")
    p.add_argument("--extra-gateway", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=CMD")
    p.add_argument("--client-core", type=int, default=0, help="core for this client and the backend (0)")
    p.add_argument("--proxy-core", type=int, default=1, help="core for the gateway (1)")
    args = p.parse_args(argv)
    if any(r <= 0 for r in args.rates) or args.seconds <= 0:
        p.error("--rates and --seconds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    variants = gateway_variants(["gateway"], gateway_command(), (), args.extra_gateway, args.variant)
    os.sched_setaffinity(0, {args.client_core})  # the client beside the backend, as wrk in bench.run
    with tempfile.TemporaryDirectory(prefix="msa-paced-") as tmp:
        workdir = Path(tmp)
        p1, p2 = free_port(), free_port()
        backend = nginx.start_backend(workdir / "backend", p1, p2, core=args.client_core)
        try:
            print(HEADER, flush=True)
            for variant in variants:
                (workdir / variant.name).mkdir()
                for result in run_variant(variant, workdir / variant.name, (p1, p2), args):
                    print(row(result), flush=True)
        finally:
            backend.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
