"""``python -m bench.stream``: streaming through the gateway, the numbers of issue 2.

1. A 1 GiB download and 2. a 1 GiB upload through the gateway, byte count and sha256 checked,
   while a thread samples the gateway's RSS (VmRSS) every 50 ms: growth must stay below 64 MiB.
3. Server-sent events: the backend emits 50 events 100 ms apart, each carrying its send time;
   the latency of each through the gateway must stay below 50 ms.

The backend (``bench/stream_backend.py``) and this client run on core 0, the gateway on core 1.
Exit status 0 when every target is met, 1 when one is missed or a check fails, 3 when the gateway
did not start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shlex
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench import gateway
from bench.procs import Proc, StartError, free_port, process_tree, rss_bytes, start
from bench.stream_backend import CHUNK, chunks, stream_sha256

MIB = 1024 * 1024
RSS_LIMIT = 64 * MIB
SSE_LIMIT_MS = 50.0
SERVICE = "stream"


@dataclass(frozen=True, slots=True)
class Transfer:
    """One streamed transfer: size and hash checks, throughput, and the gateway's RSS around it."""

    name: str
    bytes: int
    seconds: float
    sha256_ok: bool
    rss_before: int
    rss_peak: int
    rss_samples: int

    @property
    def mib_per_s(self) -> float:
        """Return the throughput in MiB/s."""
        return self.bytes / MIB / self.seconds if self.seconds > 0 else 0.0

    @property
    def rss_growth(self) -> int:
        """Return how far the RSS rose above its level before the transfer, in bytes."""
        return max(0, self.rss_peak - self.rss_before)


@dataclass(frozen=True, slots=True)
class SseResult:
    """Per-event latencies of one server-sent-event stream, in milliseconds."""

    events: int
    expected: int
    in_order: bool
    latencies_ms: tuple[float, ...]

    @property
    def p50_ms(self) -> float:
        """Return the median latency."""
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("inf")

    @property
    def p99_ms(self) -> float:
        """Return the 99th percentile latency (nearest rank)."""
        return percentile(self.latencies_ms, 99.0)

    @property
    def max_ms(self) -> float:
        """Return the worst latency."""
        return max(self.latencies_ms) if self.latencies_ms else float("inf")


def percentile(values: Sequence[float], pct: float) -> float:
    """Return the nearest-rank ``pct`` percentile of ``values`` (inf when empty)."""
    if not values:
        return float("inf")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * pct // 100)))
    return ordered[int(rank) - 1]


class RssSampler:
    """Sample the RSS of a process tree every ``interval`` seconds in a named thread; keep the peak."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self._pids = process_tree(pid)
        self._interval = interval
        self._stop = threading.Event()
        self._peak = 0
        self._samples = 0
        self._thread = threading.Thread(target=self._run, name=f"rss-sampler-{pid}", daemon=True)

    def current(self) -> int:
        """Return the RSS now."""
        return rss_bytes(self._pids)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self.current())
            self._samples += 1
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._peak = self.current()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self.current())

    @property
    def peak(self) -> int:
        """Return the highest RSS sampled so far."""
        return self._peak

    @property
    def samples(self) -> int:
        """Return how many samples were taken."""
        return self._samples


async def download(session: aiohttp.ClientSession, url: str, size: int, expected: str, pid: int) -> Transfer:
    """Stream ``size`` bytes from ``url`` chunk by chunk, hashing as they arrive."""
    h, n = hashlib.sha256(), 0
    sampler = RssSampler(pid)
    before = sampler.current()
    t0 = time.perf_counter()
    with sampler:
        async with session.get(f"{url}/download?n={size}") as resp:
            if resp.status != 200:
                raise RuntimeError(f"download answered {resp.status}: {(await resp.read())[:200]!r}")
            async for data in resp.content.iter_chunked(CHUNK):
                h.update(data)
                n += len(data)
    seconds = time.perf_counter() - t0
    ok = n == size and h.hexdigest() == expected
    return Transfer("download", n, seconds, ok, before, sampler.peak, sampler.samples)


async def _body(size: int) -> AsyncIterator[bytes]:
    for c in chunks(size):
        yield c


async def upload(session: aiohttp.ClientSession, url: str, size: int, expected: str, pid: int) -> Transfer:
    """Stream ``size`` bytes to ``url`` (Content-Length, not buffered); check what the backend hashed."""
    sampler = RssSampler(pid)
    before = sampler.current()
    t0 = time.perf_counter()
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    with sampler:
        async with session.post(f"{url}/upload", data=_body(size), headers=headers) as resp:
            answer = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"upload answered {resp.status}: {answer[:200]!r}")
    seconds = time.perf_counter() - t0
    got = json.loads(answer)
    ok = got.get("bytes") == size and got.get("sha256") == expected
    return Transfer("upload", int(got.get("bytes", 0)), seconds, ok, before, sampler.peak, sampler.samples)


async def sse(session: aiohttp.ClientSession, url: str, events: int, interval: float) -> SseResult:
    """Read ``events`` server-sent events and measure each one's latency from its send time."""
    latencies: list[float] = []
    seen: list[int] = []
    async with session.get(f"{url}/sse?n={events}&interval={interval}") as resp:
        if resp.status != 200:
            raise RuntimeError(f"sse answered {resp.status}")
        async for line in resp.content:
            if line.startswith(b"data:"):
                now = time.time()
                event = json.loads(line[5:])
                latencies.append((now - float(event["t"])) * 1000.0)
                seen.append(int(event["i"]))
    return SseResult(len(seen), events, seen == list(range(events)), tuple(latencies))


async def measure(url: str, size: int, pid: int, sse_events: int, sse_interval: float) -> dict[str, Any]:
    """Warm up, then run the download, the upload and the SSE stream against ``url``."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        small = 4 * MIB
        warm = stream_sha256(small)
        await download(session, url, small, warm, pid)
        await upload(session, url, small, warm, pid)
        expected = stream_sha256(size)
        down = await download(session, url, size, expected, pid)
        up = await upload(session, url, size, expected, pid)
        events = await sse(session, url, sse_events, sse_interval)
    return {"download": down, "upload": up, "sse": events}


def report(results: dict[str, Any], label: str, check_rss: bool) -> list[str]:
    """Print the results; return the missed targets."""
    misses: list[str] = []
    print(f"\n{label}")
    for t in (results["download"], results["upload"]):
        rss = (
            f"RSS {t.rss_before / MIB:.1f} -> peak {t.rss_peak / MIB:.1f} MiB "
            f"(+{t.rss_growth / MIB:.1f} MiB, {t.rss_samples} samples)"
        )
        print(
            f"  {t.name:8} {t.bytes / MIB:8.0f} MiB in {t.seconds:6.2f} s = {t.mib_per_s:7.1f} MiB/s  "
            f"sha256 {'ok' if t.sha256_ok else 'MISMATCH'}  " + (rss if check_rss else "")
        )
        if not t.sha256_ok:
            misses.append(f"{label} {t.name}: byte count or sha256 mismatch")
        if check_rss and t.rss_growth >= RSS_LIMIT:
            misses.append(f"{label} {t.name}: RSS grew by {t.rss_growth / MIB:.1f} MiB (limit 64)")
    s: SseResult = results["sse"]
    print(
        f"  sse      {s.events}/{s.expected} events{' in order' if s.in_order else ' OUT OF ORDER'}, "
        f"latency p50 {s.p50_ms:.2f} ms  p99 {s.p99_ms:.2f} ms  max {s.max_ms:.2f} ms"
    )
    if s.events != s.expected or not s.in_order:
        misses.append(f"{label} sse: {s.events}/{s.expected} events, in order: {s.in_order}")
    if s.max_ms >= SSE_LIMIT_MS:
        misses.append(f"{label} sse: max event latency {s.max_ms:.1f} ms (limit {SSE_LIMIT_MS:.0f})")
    return misses


def _json_ready(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, t in results.items():
        if isinstance(t, Transfer):
            out[key] = {"mib_per_s": t.mib_per_s, "rss_growth": t.rss_growth, **asdict(t)}
        elif isinstance(t, SseResult):
            out[key] = {
                "events": t.events,
                "expected": t.expected,
                "in_order": t.in_order,
                "p50_ms": t.p50_ms,
                "p99_ms": t.p99_ms,
                "max_ms": t.max_ms,
                "latencies_ms": list(t.latencies_ms),
            }
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(prog="python -m bench.stream", description="streaming through the gateway")
    p.add_argument("--size-mib", type=int, default=1024, help="download/upload size in MiB (1024)")
    p.add_argument("--sse-events", type=int, default=50, help="server-sent events (50)")
    p.add_argument("--sse-interval", type=float, default=0.1, help="seconds between events (0.1)")
    p.add_argument("--direct", action="store_true", help="also measure the backend without the gateway")
    p.add_argument("--gateway-cmd", help="command starting the gateway (default: .venv/bin/msa-gateway run)")
    p.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the gateway, e.g. UPSTREAM_CLIENT=native (repeatable)",
    )
    p.add_argument("--client-core", type=int, default=0, help="core for this client and the backend (0)")
    p.add_argument("--proxy-core", type=int, default=1, help="core for the gateway (1)")
    p.add_argument("--json", type=Path, help="write the results to this file")
    return p.parse_args(argv)


def run(args: argparse.Namespace, workdir: Path) -> int:
    """Start the backend and the gateway, measure, print; return the exit status."""
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {args.client_core})
    size = args.size_mib * MIB
    backend_port, gw_port = free_port(), free_port()
    py = sys.executable
    with contextlib.ExitStack() as stack:
        backend = start(
            "stream-backend", [py, "-m", "bench.stream_backend", str(backend_port)], workdir, args.client_core
        )
        stack.callback(backend.stop)
        backend.wait_port(backend_port)
        command = tuple(shlex.split(args.gateway_cmd)) if args.gateway_cmd else gateway.gateway_command()
        doc = gateway.gateway_config([backend_port], service=SERVICE, read_timeout=300.0)
        config = gateway.write_config(workdir / "gateway", doc)
        try:
            gw: Proc = gateway.start_gateway(
                workdir / "gateway",
                config,
                gw_port,
                args.proxy_core,
                gateway.GatewayLaunch(command=command, env=gateway.parse_env(args.gateway_env)),
                ready_path=f"/{SERVICE}/health",
            )
        except StartError as exc:
            print(f"GATEWAY DID NOT START: {' '.join(command)}\n{exc}", file=sys.stderr)
            return 3
        stack.callback(gw.stop)
        print(
            f"streaming {args.size_mib} MiB down and up, {args.sse_events} SSE events "
            f"{args.sse_interval * 1000:.0f} ms apart; gateway pid {gw.pid} on core {args.proxy_core}, "
            f"access log to file {gw.stdout}",
            flush=True,
        )
        out: dict[str, Any] = {}
        misses: list[str] = []
        if args.direct:
            direct = asyncio.run(
                measure(
                    f"http://127.0.0.1:{backend_port}", size, backend.pid, args.sse_events, args.sse_interval
                )
            )
            misses += report(direct, "direct to the backend (reference, no targets on RSS)", check_rss=False)
            out["direct"] = _json_ready(direct)
        url = f"http://127.0.0.1:{gw_port}/{SERVICE}"
        through = asyncio.run(measure(url, size, gw.pid, args.sse_events, args.sse_interval))
        misses += report(through, "through the gateway", check_rss=True)
        out["gateway"] = _json_ready(through)
        if not gw.alive():
            misses.append("the gateway died during the benchmark")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    print()
    for miss in misses:
        print(f"MISSED: {miss}", file=sys.stderr)
    print("all streaming targets met" if not misses else f"{len(misses)} target(s) missed")
    return 1 if misses else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the streaming benchmark in a temp dir; return the exit status."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="msa-stream-") as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
