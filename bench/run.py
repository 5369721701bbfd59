"""``python -m bench.run``: wrk against the backend directly, nginx as a reverse proxy, and the gateway.

Backends (one nginx, two ports) and wrk share core 0; the proxy under test runs alone on core 1.
Configurations are interleaved ``--runs`` times and the median is reported with the ratios
gateway/nginx-proxy and gateway/direct. Exit status: 0 all good; 1 a configuration had socket
errors, non-2xx responses or a wrong answer; 2 a gateway ratio is below ``--min-ratio``;
3 the gateway did not start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import gateway, nginx
from bench.procs import (
    Proc,
    StartError,
    children_cpu_seconds,
    cpu_seconds,
    free_port,
    http_request,
    system_busy_seconds,
    wait_until_quiet,
)
from bench.report import (
    CONFIGS,
    Measurement,
    Summary,
    cpu_ratios,
    format_table,
    format_versus,
    ratios,
    summarize,
    to_json,
    versus_gateway,
)
from bench.variants import GatewayVariant, gateway_variants
from bench.wrk import POST_BODY_SIZE, run_wrk

PATH = "/bench/anything"
POST_BODY = b'{"data":"' + b"x" * (POST_BODY_SIZE - 11) + b'"}'
EXIT_ERRORS, EXIT_RATIO, EXIT_NO_GATEWAY = 1, 2, 3
QUIET = 0.05  # share of all CPUs busy before start above which the run warns
NOISY_CORES = 0.15  # CPU used by other processes during a measured run above which the run warns


@dataclass(frozen=True, slots=True)
class Target:
    """A configuration under test: the URL wrk hits and the process whose CPU time is counted."""

    config: str
    url: str
    proc: Proc
    port: int


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(
        prog="python -m bench.run", description="wrk: direct vs nginx proxy vs gateway"
    )
    p.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run (10)")
    p.add_argument("--warmup", type=int, default=2, help="seconds of wrk before each measured run (2)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    p.add_argument("--runs", type=int, default=1, help="interleaved rounds; the median is reported (1)")
    p.add_argument("--only", choices=("get", "post"), help="one workload only (default: both)")
    p.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help=f"comma-separated subset of {','.join(CONFIGS)} (default: all)",
    )
    p.add_argument("--json", type=Path, help="write the results to this file")
    p.add_argument("--min-ratio", type=float, default=0.12, help="gateway/nginx-proxy target (0.12; 0 off)")
    p.add_argument(
        "--gateway-log",
        choices=("file", "devnull"),
        default="file",
        help="where the gateway's stdout (its access log) goes: a file in the temp dir or /dev/null",
    )
    p.add_argument("--gateway-cmd", help="command starting the gateway (default: .venv/bin/msa-gateway run)")
    p.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the gateway, e.g. UPSTREAM_CLIENT=native (repeatable)",
    )
    p.add_argument(
        "--extra-gateway",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="also measure a gateway started with this environment as configuration NAME (repeatable)",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=CMD",
        help="also measure the gateway started by CMD as configuration NAME, e.g. "
        "old='/tmp/bench-old/.venv/bin/msa-gateway run' (repeatable)",
    )
    p.add_argument("--client-core", type=int, default=0, help="core for wrk and the backends (0)")
    p.add_argument("--proxy-core", type=int, default=1, help="core for the proxy under test (1)")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="wait up to this many seconds for other CPU use to drop below 5%% before starting (0)",
    )
    p.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="send this header with every request, to every configuration (repeats); e.g. a credential",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir with configs and logs")
    args = p.parse_args(argv)
    args.headers = {}
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            p.error(f"--header needs 'NAME: VALUE', got {header!r}")
        args.headers[name.strip()] = value.strip()
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(args.configs) - set(CONFIGS)
    if unknown:
        p.error(f"unknown configuration(s): {', '.join(sorted(unknown))}")
    try:
        args.gateways = variants_of(args)
    except SystemExit as exc:
        p.error(str(exc.code))
    return args


def check_answer(target: Target, extra: Mapping[str, str]) -> str | None:
    """Send one GET and one 1 KiB POST to ``target`` (with the ``--header`` headers); return what is wrong."""
    for method, body in (("GET", None), ("POST", POST_BODY)):
        headers = {**extra, "Content-Type": "application/json"} if body else dict(extra)
        status, answer = http_request(target.url, method, body, headers)
        if status != 200 or not gateway.json_body_ok(answer):
            return f"{target.config}: {method} {target.url} answered {status} {answer[:200]!r}"
    return None


def measure(target: Target, backend: Proc, workload: str, run: int, args: argparse.Namespace) -> Measurement:
    """Warm up, then run wrk once against ``target``; count the CPU time its process tree used.

    Also count how much CPU everything else on the machine used meanwhile (all busy time minus
    wrk, the backend and the process under test), in cores: the noise of this run.
    """
    post = workload == "post"
    if args.warmup > 0:
        run_wrk(target.url, args.warmup, args.connections, post, args.client_core, args.header)
    pids = {target.proc.pid, backend.pid}
    before = {pid: cpu_seconds(pid) for pid in pids}
    system0, wrk0 = system_busy_seconds(), children_cpu_seconds()
    result = run_wrk(target.url, args.duration, args.connections, post, args.client_core, args.header)
    system1, wrk1 = system_busy_seconds(), children_cpu_seconds()
    after = {pid: cpu_seconds(pid) for pid in pids}
    used = after[target.proc.pid] - before[target.proc.pid]
    ours = sum(after[p] - before[p] for p in pids) + (wrk1 - wrk0)
    other = max(0.0, (system1 - system0) - ours) / result.duration_s if result.duration_s > 0 else None
    return Measurement(target.config, workload, run, result, cpu_s=used, other_cores=other)


def tool_version(argv: Sequence[str]) -> str:
    """Return the first line a tool prints about its version ('' if it cannot run)."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return ""
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) else ""


def meta(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Return what describes this run: machine, tools, settings."""
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        "python": platform.python_version(),
        "nginx": tool_version(["nginx", "-v"]),
        "wrk": tool_version(["wrk", "--version"]),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "connections": args.connections,
        "runs": args.runs,
        "client_core": args.client_core,
        "proxy_core": args.proxy_core,
        "gateway_log": str(workdir / "<configuration>" / "gateway-stdout.log")
        if args.gateway_log == "file"
        else os.devnull,
    }


def variants_of(args: argparse.Namespace) -> list[GatewayVariant]:
    """Return every gateway the command line asks to measure (see ``bench.variants``)."""
    command = tuple(shlex.split(args.gateway_cmd)) if args.gateway_cmd else gateway.gateway_command()
    return gateway_variants(args.configs, command, args.gateway_env, args.extra_gateway, args.variant)


def start_gateways(
    args: argparse.Namespace, workdir: Path, ports: Sequence[int], stack: contextlib.ExitStack
) -> tuple[list[Target], list[str]]:
    """Start every gateway variant on the proxy core; return the ones up and the failure messages."""
    targets, failures = [], []
    for variant in args.gateways:
        name, port = variant.name, free_port()
        to_file = args.gateway_log == "file"
        launch = gateway.GatewayLaunch(variant.command, log_to_file=to_file, env=variant.env)
        config = gateway.write_config(workdir / name, gateway.gateway_config(ports))
        print(f"{name}: {shlex.join(variant.command)}", flush=True)
        try:
            proc = gateway.start_gateway(
                workdir / name, config, port, args.proxy_core, launch, ready_path=PATH, headers=args.headers
            )
        except StartError as exc:
            envs = " ".join(f"{k}={v}" for k, v in variant.env.items())
            failures.append(f"GATEWAY DID NOT START ({name}): {envs} {shlex.join(variant.command)}\n{exc}")
            print(failures[-1], file=sys.stderr, flush=True)
            continue
        stack.callback(proc.stop)
        targets.append(Target(name, f"http://127.0.0.1:{port}{PATH}", proc, port))
    return targets, failures


def gateway_after(target: Target, args: argparse.Namespace, info: dict[str, Any]) -> bool:
    """Print and record that the gateway kept metrics and access log on; return whether it is alive."""
    counted = gateway.metrics_requests_total(target.port)
    lines = gateway.count_lines(target.proc.stdout)
    info[f"{target.config}_metrics_requests_total"] = counted
    info[f"{target.config}_stdout_lines"] = lines
    where = f"file {target.proc.stdout} ({lines:,} lines)" if args.gateway_log == "file" else "/dev/null"
    print(f"{target.config}: metrics on (gateway_requests_total={counted}), access log to {where}")
    if not target.proc.alive():
        print(f"GATEWAY DIED during the benchmark ({target.config})", file=sys.stderr)
        return False
    return True


def measure_all(
    targets: Sequence[Target], backend: Proc, workloads: Sequence[str], args: argparse.Namespace
) -> list[Measurement]:
    """Measure every target and workload, interleaved, ``args.runs`` times."""
    print(
        f"measuring {', '.join(t.config for t in targets)} x {', '.join(workloads).upper()}: "
        f"{args.runs} run(s) of {args.duration}s (+{args.warmup}s warm-up), c={args.connections}, "
        f"wrk+backends on core {args.client_core}, proxy on core {args.proxy_core}",
        flush=True,
    )
    measurements: list[Measurement] = []
    for n in range(args.runs):
        for workload in workloads:
            for target in targets:
                m = measure(target, backend, workload, n, args)
                measurements.append(m)
                print(
                    f"  run {n + 1} {workload.upper():4} {target.config:12} "
                    f"{m.wrk.requests_per_s:>10,.0f} req/s  p99 {m.wrk.p99_ms:6.2f} ms  "
                    f"errors {m.wrk.errors}  other {_cores(m.other_cores)}",
                    flush=True,
                )
    return measurements


def _cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} cores"


def verdict(summaries: Sequence[Summary], args: argparse.Namespace) -> int:
    """Print the ratios and any errors; return 0, ``EXIT_ERRORS`` or ``EXIT_RATIO``."""
    status = 0
    print()
    print(format_table(summaries))
    for name, value in ratios(summaries).items():
        line = f"{name} = {value:.3f}"
        if name.endswith("/nginx-proxy") and args.min_ratio > 0:
            ok = value >= args.min_ratio
            line += f"  (target >= {args.min_ratio}: {'PASS' if ok else 'MISS'})"
            status = status or (0 if ok else EXIT_RATIO)
        print(line)
    for name, value in cpu_ratios(summaries).items():
        print(f"{name} = {value:.3f}  (per-core efficiency, stricter cross-check)")
    for line in format_versus(versus_gateway(summaries)):
        print(line)
    noisy = [s for s in summaries if s.other_cores is not None and s.other_cores > NOISY_CORES]
    if noisy:
        worst = max(s.other_cores or 0.0 for s in noisy)
        print(
            f"warning: other processes used up to {worst:.2f} cores during "
            f"{', '.join(f'{s.workload.upper()} {s.config}' for s in noisy)}: "
            "these numbers are noisy; rerun on a quiet machine (--wait-quiet) before quoting them"
        )
    for s in summaries:
        if s.errors:
            print(
                f"ERRORS: {s.workload.upper()} {s.config}: {s.socket_errors} socket errors, "
                f"{s.non_2xx_3xx} non-2xx/3xx responses",
                file=sys.stderr,
            )
            status = EXIT_ERRORS
    return status


def run(args: argparse.Namespace, workdir: Path) -> int:
    """Start everything, measure, print the table; return the exit status."""
    busy = wait_until_quiet(QUIET, args.wait_quiet)
    if busy > QUIET:
        print(
            f"warning: {busy:.0%} of the CPUs busy before start (load average {os.getloadavg()[0]:.2f}): "
            "something else is running, numbers are noisy"
        )
    workloads = [args.only] if args.only else ["get", "post"]
    info = meta(args, workdir)
    info["cpu_busy_before"] = busy
    p1, p2 = free_port(), free_port()
    alive = True
    with contextlib.ExitStack() as stack:
        backend = nginx.start_backend(workdir / "backend", p1, p2, core=args.client_core)
        stack.callback(backend.stop)
        targets: list[Target] = []
        if "direct" in args.configs:
            targets.append(Target("direct", f"http://127.0.0.1:{p1}{PATH}", backend, p1))
        if "nginx-proxy" in args.configs:
            port = free_port()
            proxy = nginx.start_proxy(workdir / "proxy", port, p1, p2, core=args.proxy_core)
            stack.callback(proxy.stop)
            targets.append(Target("nginx-proxy", f"http://127.0.0.1:{port}{PATH}", proxy, port))
        gateways, failures = start_gateways(args, workdir, (p1, p2), stack)
        targets += gateways
        for target in targets:
            problem = check_answer(target, args.headers)
            if problem:
                print(f"WRONG ANSWER: {problem}", file=sys.stderr)
                return EXIT_ERRORS
        measurements = measure_all(targets, backend, workloads, args)
        for target in gateways:
            alive = gateway_after(target, args, info) and alive
    summaries = summarize(measurements)
    status = verdict(summaries, args)
    for failure in failures:
        print(f"\n{failure}", file=sys.stderr)
    if failures or not alive:
        status = status if status == EXIT_ERRORS else EXIT_NO_GATEWAY
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(to_json(info, measurements, summaries), indent=2) + "\n")
        print(f"results written to {args.json}")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark in a temp dir; return the exit status."""
    args = parse_args(argv)
    if (os.cpu_count() or 1) < 2:
        print("warning: fewer than 2 cores: the proxy shares a core with wrk; ratios are not comparable")
        args.proxy_core = args.client_core
    if args.keep:
        workdir = Path(tempfile.mkdtemp(prefix="msa-bench-"))
        print(f"configs and logs in {workdir}")
        return run(args, workdir)
    with tempfile.TemporaryDirectory(prefix="msa-bench-") as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
