"""Active health checks at scale: ``python -m bench.scale_probes --instances 20000 --seconds 120``.

Starts ``--backend-procs`` processes of cheap backends (``bench.probe_backend``: ``--ports``
ports in all, answering ``200`` to anything and closing), a gateway (``msa-gateway run``) with
``--instances`` static instances spread over those ports (instances share a port, each with
its own id, as the model allows) probed every ``--interval`` seconds, and, once it is ready and
a first round of probes went out (``--warmup``), sends a light open-loop load (``--rate``
requests/s to a two-instance service served by a backend process of its own, so its latency is
the gateway's, not the probed backends' queue) for ``--seconds`` while it measures. Every
backend stays healthy the whole time, so every unhealthy flip the gateway logs is a false one.
``--no-probes`` runs the same without health checks: the baseline for the proxied latency.

Reports: false unhealthy flips (whole run), probes/s the backends saw against the configured
rate, the gateway's CPU (whole process, and the probes' own estimate from
``gateway_health_probe_cpu_seconds_total``), the interval stretch and probes not counted for
lag, how often the gateway's own loop ran over 25 / 100 ms late (its lag histogram), the
host's load average (the machine may be shared), and the proxied p50/p99/max.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.openloop import OpenLoop, Stream, phase_stats
from bench.procs import Proc, cpu_seconds, free_port, http_request, start

LOAD_SERVICE = "load"


def build_config(
    instances: int, ports: list[int], services: int, interval: float, timeout: float, load_ports: list[int]
) -> dict[str, Any]:
    """Return the config: ``instances`` instances over ``services`` services, plus the load service."""
    check = {"path": "/health" if interval > 0 else None, "interval": interval or 5.0, "timeout": timeout}
    config: dict[str, Any] = {"defaults": {"health_check": check}, "services": {}}
    per = -(-instances // services)
    for s in range(services):
        records = [
            {"id": f"i{n}", "host": "127.0.0.1", "port": ports[n % len(ports)]}
            for n in range(s * per, min(instances, (s + 1) * per))
        ]
        if records:
            config["services"][f"svc{s}"] = {"instances": records}
    config["services"][LOAD_SERVICE] = {
        "instances": [{"id": f"load{i}", "host": "127.0.0.1", "port": p} for i, p in enumerate(load_ports)]
    }
    return config


def health_events(log_lines: list[str]) -> Counter[str]:
    """Count the gateway's health log events: flips by target status, stretches, lag reports."""
    events: Counter[str] = Counter()
    for line in log_lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        message = record.get("event") or record.get("message")
        if message == "instance health changed":
            events[f"to_{record.get('to')}"] += 1
        elif message == "health probes slowed down to spare the gateway":
            events["slowed"] += 1
        elif message == "health probes back at their configured intervals":
            events["back"] += 1
        elif message == "health probe timeouts not counted: the gateway itself was late":
            events["lag_reports"] += 1
            events["not_counted"] += int(record.get("probes", 0))
    return events


def metric(text: str, name: str, labels: str = "") -> float:
    """Return the value of the sample ``name{labels}`` in an exposition text (0 when absent)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def lag_share(before: str, after: str, bound: str) -> float:
    """Return the share of the gateway's loop-lag samples between two scrapes that were over ``bound`` s."""
    name = "gateway_event_loop_lag_seconds"
    count = metric(after, f"{name}_count") - metric(before, f"{name}_count")
    within = metric(after, f"{name}_bucket", f'le="{bound}"') - metric(
        before, f"{name}_bucket", f'le="{bound}"'
    )
    return (count - within) / count if count else 0.0


def backend_stats(port: int) -> dict[str, int]:
    """Return the requests the backends saw (``/__stats``)."""
    status, body = http_request(f"http://127.0.0.1:{port}/__stats", timeout=10.0)
    return {"health": 0, "other": 0} if status != 200 else json.loads(body)


def bound_ports(proc: Proc, timeout: float = 20.0) -> list[int]:
    """Return the ports a ``bench.probe_backend`` process printed once it listened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited: see {proc.stderr}")
        for line in proc.stdout.read_text("utf-8").splitlines():
            if line.startswith('{"ports"'):
                return [int(p) for p in json.loads(line)["ports"]]
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not listen within {timeout:.0f} s")


def probes_seen(groups: list[list[int]]) -> int:
    """Return the probes every backend process saw so far."""
    return sum(backend_stats(group[0])["health"] for group in groups)


def scrape(url: str) -> str:
    """Return the gateway's metrics text."""
    return http_request(f"{url}/metrics", timeout=30.0)[1].decode()


def wait_ready(url: str, proc: Proc, timeout: float) -> float:
    """Block until ``/health/ready`` answers 200; return the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not proc.alive():
            raise RuntimeError(f"the gateway exited: see {proc.stdout}")
        if http_request(f"{url}/health/ready", timeout=2.0)[0] == 200:
            return time.monotonic() - started
        time.sleep(0.2)
    raise RuntimeError(f"the gateway was not ready after {timeout:.0f} s")


async def load(url: str, rate: float, seconds: float) -> dict[str, float]:
    """Send ``rate`` requests/s through the gateway for ``seconds``; return latency figures in ms."""
    async with OpenLoop(url, [Stream("load", "GET", f"/{LOAD_SERVICE}/x", rate)], seconds) as loop:
        shots = await loop.run()
    stats = phase_stats(shots, "load", 0.0, seconds + 1)
    return {
        "requests": stats.count,
        "failed": stats.failed,
        "p50_ms": stats.p50 * 1000,
        "p99_ms": stats.p99 * 1000,
        "max_ms": stats.max * 1000,
    }


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Run the scenario once; return the figures."""
    counts = [len(range(i, args.ports, args.backend_procs)) for i in range(args.backend_procs)] + [2]
    backends = [
        start(f"backends{i}", [sys.executable, "-m", "bench.probe_backend", "--count", str(n)], workdir)
        for i, n in enumerate(counts)
    ]
    gateway: Proc | None = None
    try:
        groups = [bound_ports(proc) for proc in backends]
        ports, load_ports = [p for g in groups[:-1] for p in g], groups[-1]
        interval = 0.0 if args.no_probes else args.interval
        config = build_config(args.instances, ports, args.services, interval, args.timeout, load_ports)
        path = workdir / "gateway.yaml"
        path.write_text(json.dumps(config))  # JSON is YAML, and much faster to write
        port = free_port()
        env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "GATEWAY_CONFIG": str(path)}
        env.update(kv.split("=", 1) for kv in args.gateway_env)
        env.pop("PYTHONPATH", None)
        gateway = start("gateway", [sys.executable, "-m", "msa_gateway.cli", "run"], workdir, env=env)
        url = f"http://127.0.0.1:{port}"
        ready = wait_ready(url, gateway, args.start_timeout)
        print(f"gateway ready in {ready:.1f} s; warming up {args.warmup:.0f} s", flush=True)
        time.sleep(args.warmup)
        before_metrics = scrape(url)
        time.sleep(2.0)  # let the scrape's own stall pass before measuring
        cpu0, probes0, t0 = cpu_seconds(gateway.pid), probes_seen(groups), time.monotonic()
        latency = asyncio.run(load(url, args.rate, args.seconds))
        cpu1, probes1, t1 = cpu_seconds(gateway.pid), probes_seen(groups), time.monotonic()
        after_metrics = scrape(url)
        window = t1 - t0
        probe_cpu = metric(after_metrics, "gateway_health_probe_cpu_seconds_total") - metric(
            before_metrics, "gateway_health_probe_cpu_seconds_total"
        )
        gateway.stop()
        events = health_events(gateway.stdout.read_text("utf-8", errors="replace").splitlines())
        configured = (args.instances + 2) / args.interval
        return {
            "instances": args.instances,
            "interval_s": args.interval,
            "window_s": round(window, 1),
            "ready_s": round(ready, 1),
            "false_unhealthy_flips": events["to_unhealthy"],
            "probes_per_s": round((probes1 - probes0) / window, 1),
            "probes_per_s_configured": round(configured, 1),
            "gateway_cpu_percent": round(100 * (cpu1 - cpu0) / window, 1),
            "probe_cpu_percent_estimate": round(100 * probe_cpu / window, 1),
            "interval_stretch_end": metric(after_metrics, "gateway_health_probe_interval_stretch"),
            "slowed_logged": events["slowed"],
            "back_logged": events["back"],
            "probes_not_counted_lag": events["not_counted"],
            "probes_skipped": metric(after_metrics, "gateway_health_probes_skipped_total"),
            "loop_lag_over_25ms_percent": round(100 * lag_share(before_metrics, after_metrics, "0.025"), 2),
            "loop_lag_over_100ms_percent": round(100 * lag_share(before_metrics, after_metrics, "0.1"), 2),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "proxied": latency,
        }
    finally:
        if gateway is not None:
            gateway.stop()
        for proc in backends:
            proc.stop()


def main() -> None:
    """Parse the arguments, run, print the figures (and write them as JSON with ``--json``)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=120.0, help="measured window")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=2.0, help="probe timeout")
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--ports", type=int, default=32, help="backend ports the instances share")
    parser.add_argument("--backend-procs", type=int, default=2, help="processes serving those ports")
    parser.add_argument("--rate", type=float, default=50.0, help="proxied requests/s meanwhile")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--start-timeout", type=float, default=120.0)
    parser.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-probes", action="store_true", help="health checks off: the latency baseline")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scale-probes-") as tmp:
        result = run(args, Path(tmp))
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
