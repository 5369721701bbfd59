"""One measured wrk run of one configuration: the CPU its server used and what the machine did meanwhile."""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench import gateway
from bench.procs import Proc, children_cpu_seconds, cpu_seconds, http_request
from bench.quiet import interval, read_cpu_times
from bench.report import Measurement
from bench.wrk import POST_BODY_SIZE, run_wrk

PATH = "/bench/anything"
POST_BODY = b'{"data":"' + b"x" * (POST_BODY_SIZE - 11) + b'"}'


@dataclass(frozen=True, slots=True)
class Target:
    """A configuration under test: the URL wrk hits and the process whose CPU time is counted."""

    config: str
    url: str
    proc: Proc
    port: int


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
    wrk, the backend and the process under test), in cores, and the CPU steal on the cores in use:
    the noise of this run.
    """
    post = workload == "post"
    if args.warmup > 0:
        run_wrk(target.url, args.warmup, args.connections, post, args.client_core, args.header)
    pids = {target.proc.pid, backend.pid}
    before = {pid: cpu_seconds(pid) for pid in pids}
    system0, wrk0, wall0 = read_cpu_times(), children_cpu_seconds(), time.monotonic()
    result = run_wrk(target.url, args.duration, args.connections, post, args.client_core, args.header)
    system1, wrk1, wall = read_cpu_times(), children_cpu_seconds(), time.monotonic() - wall0
    after = {pid: cpu_seconds(pid) for pid in pids}
    machine = interval(system0, system1, (args.client_core, args.proxy_core))
    used = after[target.proc.pid] - before[target.proc.pid]
    ours = sum(after[p] - before[p] for p in pids) + (wrk1 - wrk0)
    # Over the wall time between the samples (wrk's start-up included), not wrk's own duration: both
    # CPU counts cover that whole interval.
    other = max(0.0, machine.busy_s - ours) / wall if wall > 0 else None
    return Measurement(
        target.config,
        workload,
        run,
        result,
        cpu_s=used,
        other_cores=other,
        steal_s=machine.steal_s,
        steal_share=machine.steal_share,
    )


def run_line(m: Measurement) -> str:
    """Return the progress line printed after one measured run."""
    other = "-" if m.other_cores is None else f"{m.other_cores:.2f} cores"
    steal = "-" if m.steal_s is None else f"{m.steal_s:.2f}s ({m.steal_share or 0.0:.1%})"
    return (
        f"  run {m.run + 1} {m.workload.upper():4} {m.config:13} "
        f"{m.wrk.requests_per_s:>10,.0f} req/s  p99 {m.wrk.p99_ms:6.2f} ms  "
        f"errors {m.wrk.errors}  other {other}  steal {steal}"
    )


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
                print(run_line(m), flush=True)
    return measurements
