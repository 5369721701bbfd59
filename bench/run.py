"""``python -m bench.run``: wrk against the backend directly, nginx as a reverse proxy, the Python peers
(``bench.peers``) and the gateway.

Backends (one nginx, two ports) and wrk share core 0; the proxy under test runs alone on core 1.
Configurations are interleaved ``--runs`` times and the median is reported with the ratios
gateway/nginx-proxy, gateway/direct and gateway/each peer; every run's CPU steal and other processes'
CPU are read from /proc/stat, and a run above the limits is reported as noisy (``bench.quiet``).
Exit status: 0 all good; 1 a configuration had socket errors, non-2xx responses or a wrong answer (a
compared peer's errors under load are printed, not counted);
2 a gateway ratio is below ``--min-ratio``; 3 the gateway or a peer did not start or died; 4 (with
``--strict-quiet``) a run was noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import gateway, nginx
from bench.measure import PATH, Target, check_answer, measure_all
from bench.peers import PEER_NAMES, peer_command, select_configs, start_peer
from bench.procs import Proc, StartError, free_port
from bench.quiet import (
    MAX_OTHER_CORES,
    MAX_STEAL,
    QUIET_BUSY,
    noise,
    read_cpu_model,
    read_idle_policy,
    wait_until_quiet,
)
from bench.report import (
    BUILTIN,
    CONFIGS,
    FLOOR,
    Measurement,
    Summary,
    cpu_ratios,
    format_table,
    format_versus,
    paired_versus,
    ratios,
    summarize,
    to_json,
    versus_gateway,
)
from bench.variants import GatewayVariant, gateway_variants

EXIT_ERRORS, EXIT_RATIO, EXIT_NO_GATEWAY, EXIT_NOISY = 1, 2, 3, 4


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
        help=f"comma-separated subset of {','.join(CONFIGS)} (default: all; a peer only when installed)",
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
        help="wait up to this many seconds for other CPU use below 5%% and steal below --max-steal (0)",
    )
    p.add_argument(
        "--max-steal",
        type=float,
        default=MAX_STEAL,
        help=f"share of a used core's time lost to CPU steal above which a run is noisy ({MAX_STEAL})",
    )
    p.add_argument(
        "--max-other",
        type=float,
        default=MAX_OTHER_CORES,
        help=f"cores used by other processes above which a run is noisy ({MAX_OTHER_CORES})",
    )
    p.add_argument(
        "--strict-quiet",
        action="store_true",
        help=f"exit {EXIT_NOISY} when a run was noisy (steal or other processes above their limits)",
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
    try:
        args.configs, args.config_notes = select_configs(args.configs, BUILTIN)
        args.gateways = variants_of(args)
    except SystemExit as exc:
        p.error(str(exc.code))
    return args


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
        "cpu_model": read_cpu_model(),
        "cpu_idle": read_idle_policy(),
        "python": platform.python_version(),
        "nginx": tool_version(["nginx", "-v"]),
        "wrk": tool_version(["wrk", "--version"]),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "connections": args.connections,
        "runs": args.runs,
        "client_core": args.client_core,
        "proxy_core": args.proxy_core,
        "max_steal": args.max_steal,
        "max_other_cores": args.max_other,
        "gateway_log": str(workdir / "<configuration>" / "gateway-stdout.log")
        if args.gateway_log == "file"
        else os.devnull,
    }


def variants_of(args: argparse.Namespace) -> list[GatewayVariant]:
    """Return every gateway the command line asks to measure (see ``bench.variants``)."""
    command = tuple(shlex.split(args.gateway_cmd)) if args.gateway_cmd else gateway.gateway_command()
    return gateway_variants(args.configs, command, args.gateway_env, args.extra_gateway, args.variant)


@dataclass
class Started:
    """The processes under test that started (stopped when ``stack`` closes) and the failure messages."""

    stack: contextlib.ExitStack
    targets: list[Target] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def launch(self, name: str, port: int, start: Callable[[], Proc], failure: str) -> None:
        """Call ``start``; keep its target, or print and keep ``failure`` with the tail of its output."""
        try:
            proc = start()
        except StartError as exc:
            self.failures.append(f"{failure}\n{exc}")
            print(self.failures[-1], file=sys.stderr, flush=True)
            return
        self.stack.callback(proc.stop)
        self.targets.append(Target(name, f"http://127.0.0.1:{port}{PATH}", proc, port))


def start_gateways(args: argparse.Namespace, workdir: Path, ports: Sequence[int], started: Started) -> None:
    """Start every gateway variant on the proxy core."""
    for variant in args.gateways:
        name, port = variant.name, free_port()
        to_file = args.gateway_log == "file"
        launch = gateway.GatewayLaunch(variant.command, log_to_file=to_file, env=variant.env)
        config = gateway.write_config(workdir / name, gateway.gateway_config(ports))
        print(f"{name}: {shlex.join(variant.command)}", flush=True)
        envs = " ".join(f"{k}={v}" for k, v in variant.env.items())
        start = functools.partial(
            gateway.start_gateway,
            workdir / name,
            config,
            port,
            args.proxy_core,
            launch,
            PATH,
            headers=args.headers,
        )
        started.launch(
            name, port, start, f"GATEWAY DID NOT START ({name}): {envs} {shlex.join(variant.command)}"
        )


def start_peers(args: argparse.Namespace, workdir: Path, ports: Sequence[int], started: Started) -> None:
    """Start every peer asked for on the proxy core."""
    for name in (c for c in args.configs if c in PEER_NAMES):
        port = free_port()
        print(f"{name}: {shlex.join(peer_command(name, port))}", flush=True)
        start = functools.partial(start_peer, name, workdir / name, port, ports, args.proxy_core, PATH)
        started.launch(name, port, start, f"PEER DID NOT START ({name})")


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


def noisy_runs(summaries: Sequence[Summary], args: argparse.Namespace) -> dict[str, list[str]]:
    """Return, per ``WORKLOAD config`` whose worst run was noisy, why (steal or other processes)."""
    out = {}
    for s in summaries:
        reasons = noise(s.other_cores, s.steal_share, args.max_other, args.max_steal)
        if reasons:
            out[f"{s.workload.upper()} {s.config}"] = reasons
    return out


def verdict(
    summaries: Sequence[Summary],
    args: argparse.Namespace,
    cpu_model: str,
    measurements: Sequence[Measurement] = (),
    idle: str = "",
) -> int:
    """Print the table, the ratios, noise and errors; return 0, ``EXIT_ERRORS``, ``EXIT_NOISY`` (with
    ``--strict-quiet``) or ``EXIT_RATIO``, in that order of precedence."""
    status = 0
    idle_note = f"; idle: {idle}" if idle else ""
    print(f"\nCPU: {cpu_model} ({os.cpu_count()} cores{idle_note}); median of {args.runs} run(s)")
    print(format_table(summaries))
    for name, value in ratios(summaries).items():
        line = f"{name} = {value:.3f}"
        if name.endswith(f"/{FLOOR}"):
            line += "  (host-independent: quote it with the CPU model above)"
        if name.endswith("/nginx-proxy") and args.min_ratio > 0:
            ok = value >= args.min_ratio
            line += f"  (target >= {args.min_ratio}: {'PASS' if ok else 'MISS'})"
            status = status or (0 if ok else EXIT_RATIO)
        print(line)
    for name, value in cpu_ratios(summaries).items():
        print(f"{name} = {value:.3f}  (per-core efficiency, stricter cross-check)")
    for line in format_versus(versus_gateway(summaries)):
        print(line)
    for line in format_versus(paired_versus(measurements)):
        print(f"{line}  (paired: median of the per-run ratios)")
    noisy = noisy_runs(summaries, args)
    if noisy:
        print("\nNOISY, DO NOT QUOTE these figures; rerun when quiet (--wait-quiet 120 waits out steal too):")
        for name, reasons in noisy.items():
            print(f"  {name}: {'; '.join(reasons)}")
        status = EXIT_NOISY if args.strict_quiet and status in (0, EXIT_RATIO) else status
    for s in summaries:
        if s.errors:
            # A compared proxy failing under load is its own result, not a broken measurement.
            compared = s.config in PEER_NAMES and s.config != FLOOR
            print(
                f"{'PEER ERRORS (status unchanged)' if compared else 'ERRORS'}: {s.workload.upper()} "
                f"{s.config}: {s.socket_errors} socket errors, {s.non_2xx_3xx} non-2xx/3xx responses",
                file=sys.stderr,
            )
            status = status if compared else EXIT_ERRORS
    return status


def run(args: argparse.Namespace, workdir: Path) -> int:
    """Start everything, measure, print the table; return the exit status."""
    cores = (args.client_core, args.proxy_core)
    before = wait_until_quiet(args.wait_quiet, cores, args.max_steal)
    if before.busy_share > QUIET_BUSY or before.steal_share > args.max_steal:
        print(
            f"warning: {before.busy_share:.0%} of the CPUs busy, {before.steal_share:.0%} of a core stolen "
            f"before start (load average {os.getloadavg()[0]:.2f}): numbers will be noisy"
        )
    for note in args.config_notes:
        print(note)
    workloads = [args.only] if args.only else ["get", "post"]
    info = meta(args, workdir)
    info["cpu_busy_before"] = before.busy_share
    info["cpu_steal_before"] = before.steal_share
    print(f"CPU: {info['cpu_model']}; idle: {info['cpu_idle']}", flush=True)
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
        started = Started(stack)
        start_peers(args, workdir, (p1, p2), started)
        peers = list(started.targets)
        start_gateways(args, workdir, (p1, p2), started)
        gateways, failures = started.targets[len(peers) :], started.failures
        targets += started.targets
        for target in targets:
            problem = check_answer(target, args.headers)
            if problem:
                print(f"WRONG ANSWER: {problem}", file=sys.stderr)
                return EXIT_ERRORS
        measurements = measure_all(targets, backend, workloads, args)
        for target in gateways:
            alive = gateway_after(target, args, info) and alive
        for target in (t for t in peers if not t.proc.alive()):
            print(f"PEER DIED during the benchmark ({target.config})", file=sys.stderr)
            alive = False
    summaries = summarize(measurements)
    status = verdict(summaries, args, info["cpu_model"], measurements, info["cpu_idle"])
    info["noisy"] = noisy_runs(summaries, args)
    info["quotable"] = not info["noisy"]
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
