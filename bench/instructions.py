"""Instructions per proxied request, counted by callgrind: a figure the shared VM's noise cannot move.

    python -m bench.instructions [--requests 2000] [--connections 8] [--window 60] [--method GET|POST]
        [--extra-gateway NAME:KEY=VALUE[,KEY=VALUE]]... [--variant NAME=CMD]... [--header 'NAME: VALUE']...
        [--keep DIR] [--functions N]

On this VM two ``bench.run`` rounds of one build can differ by 20% (CPU steal, neighbours), so
differences of a few percent or a few µs cannot be read from wall clocks. Here each gateway runs
under ``valgrind --tool=callgrind`` in front of the nginx backend: counters zeroed, ``--requests``
requests over ``--connections`` keep-alive connections then idle until ``--window`` seconds passed,
dump; ``--window`` seconds idle, dump. Per request = (first - second) / requests, so the gateway's
timed background work (probes, loop-lag sampler, log flushes) cancels out. Deterministic to ~0.1%
run to run; user space only (the kernel's socket work is not counted, see ``bench.run`` for that).

Variants as in ``bench.run``: ``--extra-gateway`` for other settings (``off:TRACING=off``),
``--variant`` for another command (``old='env PYTHONPATH=/tmp/old/src .venv/bin/python -m
msa_gateway.cli run'``, or ``bench/with_policies.py`` for a policy). Needs ``valgrind`` (Debian).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.callgrind_self import read, table
from bench.gateway import SERVICE, GatewayLaunch, gateway_config, start_gateway, write_config
from bench.nginx import start_backend
from bench.procs import REPO, find_binary, free_port
from bench.variants import GatewayVariant, gateway_variants

SUMMARY = re.compile(rb"^summary:\s+(\d+)", re.MULTILINE)
BODY = b"x" * 1024


@dataclass(frozen=True, slots=True)
class Count:
    """One gateway's figure: instructions of the burst window and of the idle window."""

    name: str
    busy: int
    idle: int
    requests: int
    dumps: tuple[Path, ...] = ()  # (burst, idle) dump files, while they exist

    @property
    def per_request(self) -> float:
        """Return the instructions one request cost (the idle window's background taken off)."""
        return (self.busy - self.idle) / self.requests


def summary(dump: bytes) -> int:
    """Return the total instructions (``summary:`` line) of a callgrind dump."""
    m = SUMMARY.search(dump)
    if m is None:
        raise ValueError("no 'summary:' line in the callgrind dump")
    return int(m.group(1))


def request_bytes(method: str, headers: Sequence[str] = ()) -> bytes:
    """Return one request as the client sends it, with ``headers`` ('NAME: VALUE') after ``Host``."""
    extra = "".join(f"{header}\r\n" for header in headers).encode()
    head = f"{method} /{SERVICE}/anything HTTP/1.1\r\nHost: bench\r\n".encode() + extra
    if method == "POST":
        return head + b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n\r\n" + BODY
    return head + b"\r\n"


async def _connection(port: int, request: bytes, n: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(n):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"the gateway answered {head.split(b' ', 2)[1].decode()}, not 200")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
    finally:
        writer.close()


def load(port: int, request: bytes, requests: int, connections: int) -> float:
    """Send ``requests`` requests over ``connections`` connections; return the seconds it took."""
    started = time.monotonic()

    async def run() -> None:
        per = requests // connections
        await asyncio.gather(*(_connection(port, request, per) for _ in range(connections)))

    asyncio.run(run())
    return time.monotonic() - started


def control(pid: int, prefix: Path, command: str) -> None:
    """Send ``command`` (``-z`` zero, ``-d`` dump) to callgrind in ``pid``; fail unless it took it.

    The FIFO names carry the prefix, ``$USER`` and ``$HOST``; the gateway's ``HOST`` is its listen
    address (``bench.gateway.gateway_env``), so ours is set the same.
    """
    argv = ["callgrind_control", f"--vgdb-prefix={prefix}", command, str(pid)]
    env = {**os.environ, "HOST": "127.0.0.1"}
    done = subprocess.run(argv, check=True, capture_output=True, env=env)
    if b"error" in done.stderr or b"failed" in done.stderr:  # its exit status is 0 either way
        raise SystemExit(f"callgrind_control {command} {pid}: {done.stderr.decode().strip()}")


def measure(variant: GatewayVariant, args: argparse.Namespace, backend: Sequence[int], root: Path) -> Count:
    """Run ``variant`` under callgrind and count one burst window and one idle window."""
    workdir = root / variant.name
    config = write_config(workdir, gateway_config(backend))
    out = workdir / "callgrind.out.%p"
    prefix = workdir / "vgdb"
    valgrind = (
        "valgrind",
        "--tool=callgrind",
        "--trace-children=yes",
        f"--vgdb-prefix={prefix}",
        f"--callgrind-out-file={out}",
    )
    launch = GatewayLaunch((*valgrind, *variant.command), env=variant.env)
    port = free_port()
    headers = dict(header.partition(": ")[::2] for header in args.header)
    proc = start_gateway(workdir, config, port, None, launch, f"/{SERVICE}/ready", 300.0, headers)
    try:
        request = request_bytes(args.method, args.header)
        load(port, request, 8 * args.connections, args.connections)  # warm up
        control(proc.pid, prefix, "-z")
        took = load(port, request, args.requests, args.connections)
        if took >= args.window:
            raise SystemExit(
                f"{variant.name}: the burst took {took:.0f} s, over --window {args.window:.0f} s"
            )
        time.sleep(args.window - took)
        control(proc.pid, prefix, "-d")  # write the counters (and zero them)
        time.sleep(args.window)
        control(proc.pid, prefix, "-d")
    finally:
        proc.stop(timeout=60.0)
    dumps = sorted(workdir.glob(f"callgrind.out.{proc.pid}.*"), key=lambda p: int(p.suffix[1:]))
    busy, idle = (summary(p.read_bytes()) for p in dumps[-2:])
    requests = args.requests // args.connections * args.connections
    return Count(variant.name, busy, idle, requests, tuple(dumps[-2:]))


def functions_table(count: Count, top: int) -> str:
    """Return where ``count``'s instructions per request go, per C function (``bench.callgrind_self``)."""
    busy, idle = count.dumps
    return f"== {count.name}: self cost per request\n" + table(
        read(busy).per_request(read(idle), count.requests), top
    )


def report(counts: Sequence[Count]) -> str:
    """Return the table: instructions per request and the ratio to the first gateway."""
    first = counts[0].per_request
    lines = [f"{'config':<16} {'instructions/request':>21} {'x first':>8} {'difference':>11}"]
    for c in counts:
        diff = c.per_request - first
        lines.append(f"{c.name:<16} {c.per_request:>21,.0f} {c.per_request / first:>8.3f} {diff:>+11,.0f}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    ap = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--window", type=float, default=60.0, help="seconds of each counted window")
    ap.add_argument("--method", choices=("GET", "POST"), default="GET", help="POST sends 1 KiB")
    ap.add_argument("--extra-gateway", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=CMD")
    ap.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="sent with every request (an API key, ...; repeats)",
    )
    ap.add_argument("--no-gateway", action="store_true", help="measure only the variants")
    ap.add_argument("--keep", type=Path, help="keep the callgrind dumps here (for callgrind_annotate)")
    ap.add_argument(
        "--functions",
        type=int,
        default=0,
        metavar="N",
        help="print the N C functions with most self cost per request",
    )
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Count every gateway in turn and print the table."""
    args = parse_args(argv)
    find_binary("valgrind")
    command = (str(REPO / ".venv" / "bin" / "python"), "-m", "msa_gateway.cli", "run")
    configs = () if args.no_gateway else ("gateway",)
    variants = gateway_variants(configs, command, (), args.extra_gateway, args.variant)
    counts = []
    with tempfile.TemporaryDirectory(prefix="msa-instr-") as tmp:
        root = args.keep or Path(tmp)
        backend = (free_port(), free_port())
        nginx = start_backend(root / "nginx", *backend, core=0)
        try:
            for variant in variants:
                counts.append(measure(variant, args, backend, root))
                print(f"{variant.name}: {counts[-1].per_request:,.0f} instructions/request", flush=True)
                if args.functions:
                    print(functions_table(counts[-1], args.functions), flush=True)
        finally:
            nginx.stop()
    print(report(counts))


if __name__ == "__main__":
    main()
