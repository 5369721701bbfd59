"""Rate limiting on several gateway processes: how exact it is, and what a Redis outage does.

    .venv/bin/python -m bench.ratelimit accuracy [--gateways 3] [--connections 200] [--duration 10]
                                                 [--rate 100] [--burst 0] [--backend both|redis|local]
                                                 [--timeout S] [--sync-interval S]
    .venv/bin/python -m bench.ratelimit failure  [--mode allow|deny|local] [--connections 50]
    .venv/bin/python -m bench.ratelimit decision [--connections 64] [--duration 10] [--decision-rate N]

``accuracy``: (``--backend both``, the default: the ``redis`` run, then the same with ``local``)
a ``redis-server``, an nginx backend and N gateways, every request under one key
(``key: route``) limited to ``--rate``/second with burst 0; one wrk per gateway, the connections
split between them, for ``--duration`` seconds. Admitted = the gateways' own
``gateway_ratelimit_decisions_total{result="allowed"}``, against the ideal ``rate x duration``.

``failure``: the same set-up at 100/s under an asyncio client that records every answer; Redis
is SIGKILLed 2 s in and started again 2 s later (the load goes on for 2 s after that). Reported:
when the configured mode first answered after the kill, when Redis decided again after the
restart, the slowest request, and the admitted counts in the two seconds after Redis came back.

``decision``: the wait one request has for its decision, in-process (no HTTP, no wrk): ``--connections``
(default 64) coroutines each ask a ``redis`` limiter (a real ``redis-server``, one key, never
refusing) for decisions for ``--duration`` seconds, back to back (the worst case: every
connection waiting on Redis at once) or, with ``--decision-rate``, at that total rate as requests
arriving at a gateway would (open loop); p50/p99/p99.9 of the wait
and decisions per second, then the same with a ``local`` limiter. It isolates the latency the
Redis round trip adds to a request from the gateway's own (which a busy shared machine makes
too noisy to difference at p99 with wrk).

The CPU cost of the ``local`` stage per request is ``bench/ratelimit_micro.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from bench import nginx
from bench.gateway import GatewayLaunch, gateway_command, gateway_config, start_gateway, write_config
from bench.procs import Proc, find_binary, free_port, http_request, start
from bench.stream import percentile
from bench.wrk import parse_wrk_output, wrk_command

PATH = "/bench/anything"


def start_redis(workdir: Path, port: int) -> Proc:
    """Start a ``redis-server`` without persistence on ``port``."""
    argv = [find_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    proc = start("redis", [*argv, "--appendonly", "no", "--dir", str(workdir)], workdir, cwd=workdir)
    proc.wait_port(port)
    return proc


def policy(args: argparse.Namespace) -> dict[str, Any]:
    """Return the ``rate_limit`` block under test."""
    block: dict[str, Any] = {
        "key": "route",
        "limits": [{"rate": f"{args.rate}/second", "burst": args.burst}],
        "backend": args.backend,
        "on_backend_error": args.mode,
    }
    if args.timeout is not None:
        block["backend_timeout"] = args.timeout
    if args.sync_interval:
        block["sync_interval"] = args.sync_interval
    return block


@contextlib.contextmanager
def cluster(args: argparse.Namespace) -> Iterator[tuple[list[int], Proc, int, Path]]:
    """Start Redis, the backend and the gateways; yield the gateway ports, Redis and its port."""
    with tempfile.TemporaryDirectory(prefix="bench-rl-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        redis_port, p1, p2 = free_port(), free_port(), free_port()
        redis = start_redis(work, redis_port)
        stack.callback(redis.stop)
        (work / "backend").mkdir()
        backend = nginx.start_backend(work / "backend", p1, p2, core=1)
        stack.callback(backend.stop)
        document = gateway_config([p1, p2], health_path=None)
        document["services"]["bench"]["policies"] = {"rate_limit": policy(args)}
        env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis_port), "LOG_LEVEL": "warning"}
        launch = GatewayLaunch(gateway_command(), log_to_file=True, env=env)
        ports = []
        for i in range(args.gateways):
            port, gw_dir = free_port(), work / f"gw{i}"
            config = write_config(gw_dir, document)
            proc = start_gateway(gw_dir, config, port, None, launch, "/health/")
            stack.callback(proc.stop)
            ports.append(port)
        yield ports, redis, redis_port, work


def decisions(port: int, into: dict[str, float]) -> None:
    """Add the gateway's ``gateway_ratelimit_decisions_total`` samples to ``into``, by result."""
    _, body = http_request(f"http://127.0.0.1:{port}/metrics")
    for line in body.decode().splitlines():
        if line.startswith("gateway_ratelimit_decisions_total{"):
            result = line.split('result="', 1)[1].split('"', 1)[0]
            into[result] = into.get(result, 0.0) + float(line.rsplit(" ", 1)[1])


def outage_reasons(work: Path) -> dict[str, int]:
    """Count the gateways' ``ratelimit_backend_down`` log lines by reason."""
    counts: dict[str, int] = {}
    for log in work.glob("gw*/gateway-stdout.log"):
        for line in log.read_text(errors="replace").splitlines():
            if "ratelimit_backend_down" in line:
                reason = json.loads(line).get("reason", "?") if line.startswith("{") else "?"
                counts[reason] = counts.get(reason, 0) + 1
    return counts


def accuracy(args: argparse.Namespace) -> None:
    """Hammer one key through every gateway; print admitted against ideal."""
    load = os.getloadavg()[0]  # the result depends on it: a starved limiter sees gaps in the arrivals
    with cluster(args) as (ports, _, _, work):
        share = [
            args.connections // len(ports) + (i < args.connections % len(ports)) for i in range(len(ports))
        ]
        procs = [
            subprocess.Popen(
                wrk_command(f"http://127.0.0.1:{p}{PATH}", args.duration, c, post=False, core=None),
                stdout=subprocess.PIPE,
                text=True,
            )
            for p, c in zip(ports, share, strict=True)
        ]
        results = [parse_wrk_output(p.communicate()[0]) for p in procs]
        results_by: dict[str, float] = {}
        for port in ports:
            decisions(port, results_by)
        outages = outage_reasons(work)
        admitted = results_by.get("allowed", 0.0) + results_by.get("fallback_allowed", 0.0)
    sent = sum(r.requests for r in results)
    ideal = args.rate * args.duration
    print(f"burst={args.burst} backend={args.backend} sync_interval={args.sync_interval}", end=" ")
    print(f"gateways={len(ports)} c={args.connections} load average before {load:.2f}")
    print(f"requests sent {sent:.0f} ({sent / args.duration:.0f}/s); admitted {admitted:.0f}")
    print("decisions: " + ", ".join(f"{k}={v:.0f}" for k, v in sorted(results_by.items())))
    if outages:
        print(
            "backend outages logged (reason: count): "
            + ", ".join(f"{k}: {v}" for k, v in sorted(outages.items()))
        )
    print(f"ideal {ideal} (+1 for the first request); error {100 * (admitted - ideal) / ideal:+.2f}%")


async def client(url: str, log: list[tuple[float, float, int]], until: list[float]) -> None:
    """Send requests one after another until ``until[0]`` (it may move); record (start, latency, status)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while (now := time.perf_counter()) < until[0]:
            try:
                async with session.get(url) as r:
                    await r.read()
                    status = r.status
            except aiohttp.ClientError:
                status = 0
            log.append((now, time.perf_counter() - now, status))


async def failure_run(
    args: argparse.Namespace, ports: list[int], redis: Proc, redis_port: int, work: Path
) -> None:
    log: list[tuple[float, float, int]] = []
    t0 = time.perf_counter()
    urls = [f"http://127.0.0.1:{ports[i % len(ports)]}{PATH}" for i in range(args.connections)]
    until = [t0 + 60.0]  # set once Redis is back: two full seconds after it
    load = asyncio.gather(*(client(u, log, until) for u in urls))
    await asyncio.sleep(2.0)
    redis.popen.kill()
    redis.popen.wait()
    killed = time.perf_counter()
    await asyncio.sleep(2.0)
    restarting = time.perf_counter()
    restarted_proc = await asyncio.to_thread(start_redis, work, redis_port)
    back = time.perf_counter()
    until[0] = back + 2.0
    await load
    restarted_proc.stop()
    fallback = {"allow": 200, "deny": 503, "local": 200}[args.mode]
    # the first answer of the configured mode that was sent after the kill
    after_kill = sorted(s + lat for s, lat, st in log if s >= killed and st == fallback)
    first_mode = (after_kill[0] - killed) if after_kill else float("nan")
    decided = sorted(s + lat for s, lat, st in log if s >= back and st in (200, 429))
    window = [st for s, lat, st in log if back + 0.0 <= s < back + 1.0]
    print(f"mode={args.mode} (fallback status {fallback}); requests {len(log)}")
    print(f"first {fallback} sent after the kill answered {first_mode * 1000:.0f} ms after it")
    during = [st for s, _, st in log if killed + 0.3 <= s < restarting]
    print(f"during the outage: {len(during)} answers, statuses {sorted(set(during))}")
    errors = sum(st == 0 for *_, st in log)
    print(f"slowest request: {max(lat for _, lat, _ in log) * 1000:.0f} ms; client errors {errors}")
    if decided:
        print(f"first Redis decision after the restart: {(decided[0] - back) * 1000:.0f} ms")
    steady = [st for s, _, st in log if back + 1.0 <= s < back + 2.0]
    print(f"admitted in [restart, +1s): {window.count(200)}; in [+1s, +2s): {steady.count(200)}", end=" ")
    print(f"(limit {args.rate}/s)")
    print(f"outages logged by the {len(ports)} gateways (reason: count): {outage_reasons(work)}")


async def _waits(limiter: Any, connections: int, duration: float, rate: float | None) -> list[float]:
    """Return every decision's wait, ``connections`` callers deciding for ``duration``.

    Back to back (closed loop) without ``rate``; else together ``rate`` decisions a second, each
    caller on its own schedule (open loop: a late answer does not delay the next request).
    """
    waits: list[float] = []
    start = time.perf_counter()
    until = start + duration

    async def decide() -> None:
        started = time.perf_counter()
        await limiter.decide("ip:127.0.0.1")
        waits.append(time.perf_counter() - started)

    async def caller(i: int) -> None:
        if rate is None:
            while time.perf_counter() < until:
                await decide()
            return
        pending = set()
        gap = connections / rate
        slot = start + i * gap / connections
        while slot < until:
            await asyncio.sleep(max(0.0, slot - time.perf_counter()))
            task = asyncio.ensure_future(decide())
            pending.add(task)
            task.add_done_callback(pending.discard)
            slot += gap
        await asyncio.gather(*pending)

    await asyncio.gather(*(caller(i) for i in range(connections)))
    return waits


async def decision_run(args: argparse.Namespace) -> None:
    """Print the decision wait of a ``redis`` limiter, then of a ``local`` one, under the same load."""
    from msa_gateway.observability.metrics import Metrics
    from msa_gateway.policies.ratelimit import redis_backend
    from msa_gateway.policies.ratelimit_config import parse
    from msa_gateway.policies.ratelimit_limiter import Limiter
    from msa_gateway.policies.shared import SharedState
    from msa_gateway.settings import Settings

    with tempfile.TemporaryDirectory(prefix="bench-rl-") as tmp:
        port = free_port()
        redis = start_redis(Path(tmp), port)
        settings = Settings(_env_file=None, redis_host="127.0.0.1", redis_port=port)  # type: ignore[call-arg]
        shared = SharedState(settings=settings, metrics=Metrics())
        try:
            for backend in ("redis", "local"):
                config = parse({"key": "ip", "limits": ["1000000/second"], "backend": backend})
                rb = redis_backend(shared, config.backend_timeout) if backend == "redis" else None
                limiter = Limiter(config, "bench", rb, time.monotonic, shared.tasks)
                waits = await _waits(limiter, args.connections, args.duration, args.decision_rate)
                ms = [1000 * w for w in waits]
                print(
                    f"{backend:5s} c={args.connections} rate={args.decision_rate or 'max'}:"
                    f" {len(ms) / args.duration:,.0f} decisions/s;"
                    f" wait p50 {percentile(ms, 50):.3f} ms, p99 {percentile(ms, 99):.3f} ms,"
                    f" p99.9 {percentile(ms, 99.9):.3f} ms (load average {os.getloadavg()[0]:.2f})"
                )
        finally:
            await shared.aclose()
            redis.stop()


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and run one scenario."""
    parser = argparse.ArgumentParser(prog="bench.ratelimit")
    parser.add_argument("scenario", choices=["accuracy", "failure", "decision"])
    parser.add_argument("--gateways", type=int, default=3)
    parser.add_argument("--connections", type=int, default=None)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--burst", type=int, default=0)
    parser.add_argument(
        "--backend",
        choices=["redis", "local", "both"],
        default="both",
        help="accuracy: both runs redis, then local",
    )
    parser.add_argument("--mode", choices=["allow", "deny", "local"], default="deny")
    parser.add_argument("--sync-interval", type=float, default=None)
    parser.add_argument("--decision-rate", type=float, default=None, help="decision: per second (open loop)")
    parser.add_argument("--timeout", type=float, default=None, help="backend_timeout (default: the policy's)")
    args = parser.parse_args(argv)
    if args.scenario == "decision":
        args.connections = args.connections or 64
        asyncio.run(decision_run(args))
        return
    if args.scenario == "accuracy":
        args.connections = args.connections or 200
        for backend in ("redis", "local") if args.backend == "both" else (args.backend,):
            accuracy(argparse.Namespace(**{**vars(args), "backend": backend}))
        return
    if args.backend == "both":
        args.backend = "redis"
    args.connections = args.connections or 50
    with cluster(args) as (ports, redis, redis_port, work):
        asyncio.run(failure_run(args, ports, redis, redis_port, work))


if __name__ == "__main__":
    main()
