"""Microbenchmark of the ``local`` rate_limit stage alone: ns per request, in-process, no event loop.

    .venv/bin/python -m bench.ratelimit_micro [--calls 100000] [--rounds 5] [--clients 10000]

The requests are built first (``--clients`` distinct client IPs, as ``key: ip`` sees them);
then each round times ``--calls`` stage calls with ``time.perf_counter_ns`` (wall) and
``time.process_time_ns`` (CPU), each call driving the stage's coroutine to its end as the
handler's ``await`` does. The stage is built as the runtime builds it, with metrics (the
decision counter is part of the cost). An ``async`` stage that does nothing is timed the same
way: the floor any stage pays for being called. Figures: best and median of the rounds.
This is a supplement to ``bench.run`` variants (whole-process CPU per request), not a substitute.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.auth_micro import BASE_HEADERS, _drive, _request
from msa_gateway.model import ServiceOptions, ServiceSpec
from msa_gateway.observability.metrics import Metrics
from msa_gateway.policies.ratelimit import RateLimitStage
from msa_gateway.policies.ratelimit_config import parse
from msa_gateway.policies.shared import SharedState
from msa_gateway.proxy.request import ProxyRequest

LIMITS = {"1 limit": ["1000000/second"], "2 limits": ["1000000/second", "100000000/hour"]}


async def _nothing(request: ProxyRequest) -> None:
    del request


def requests(calls: int, clients: int) -> list[ProxyRequest]:
    """Return ``calls`` requests from ``clients`` distinct addresses, in turn."""
    made = []
    for i in range(calls):
        req = _request(list(BASE_HEADERS))
        n = i % clients
        req.peer = f"10.{n // 62500}.{n // 250 % 250}.{n % 250}"
        made.append(req)
    return made


def rounds(stage: Callable[[ProxyRequest], Any], reqs: list[ProxyRequest], n: int) -> list[tuple[int, int]]:
    """Return (wall ns, CPU ns) per call of each of ``n`` rounds over ``reqs``."""
    out = []
    for _ in range(n):
        for req in reqs:  # a fresh request each round: client_ip and rate_limit are per request
            req._client_ip = None  # the stage resolves it, as on the first call
        wall, cpu = time.perf_counter_ns(), time.process_time_ns()
        for req in reqs:
            _drive(stage(req))
        out.append(
            ((time.perf_counter_ns() - wall) // len(reqs), (time.process_time_ns() - cpu) // len(reqs))
        )
    return out


def stage_for(limits: list[str]) -> RateLimitStage:
    """Return the ``local`` stage with ``limits``, built with metrics as the runtime builds it."""
    shared = SharedState(metrics=Metrics())
    spec = ServiceSpec("bench", (), ServiceOptions(), shared=shared)
    return RateLimitStage.build(parse({"name": "micro", "limits": limits}), spec)


def report(name: str, figures: list[tuple[int, int]]) -> None:
    """Print best and median wall and CPU ns per call."""
    wall, cpu = [w for w, _ in figures], [c for _, c in figures]
    print(
        f"{name:28s} wall {min(wall):5d} ns best, {statistics.median(wall):7.0f} median;"
        f" CPU {min(cpu):5d} ns best, {statistics.median(cpu):7.0f} median"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Print the per-request cost of the local stage."""
    p = argparse.ArgumentParser(prog="python -m bench.ratelimit_micro", description=__doc__)
    p.add_argument("--calls", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--clients", type=int, default=10_000)
    args = p.parse_args(argv)
    reqs = requests(args.calls, args.clients)
    print(f"{args.calls} calls per round, {args.rounds} rounds, {args.clients} client IPs")
    report("async stage doing nothing", rounds(_nothing, reqs, args.rounds))
    for name, limits in LIMITS.items():
        report(f"local rate_limit, {name}", rounds(stage_for(limits), reqs, args.rounds))


if __name__ == "__main__":
    main()
