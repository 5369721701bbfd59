"""Fault injection against a real gateway process: an instance crashes, an instance hangs, SIGTERM.

    python -m bench.faults [--rate 200] [--duration 30] [--kill-at 10] [--restart-at 20]
                           [--upstream-client native|aiohttp] [--recovery-grace S]
                           [--only crash,hang,drain,stall,regrow]

Each scenario starts its own backend processes (``tests.support.backend_app``) and one
``msa-gateway run`` process on 127.0.0.1, drives an open-loop load (``bench.openloop``) with a
unique ``X-Request-ID`` per request, injects the fault on schedule and checks the promises of
issue 4 from the clients' answers and the backends' per-request-id counts:

1. ``bench.crash``: SIGKILL one of two instances at ``--kill-at``, restart it at ``--restart-at``.
2. ``bench.hang``: one of two instances hangs from ``--kill-at`` to ``--restart-at``.
3. ``bench.drain``: SIGTERM to the gateway 2 s into a 10 s SSE stream.
4. ``bench.stall``: one of three instances SIGSTOPped for 4 s at 150 GET/s + 50 POST/s, once with
   hedging on and once with it off (latency ejection alone).
5. ``bench.regrow``: Redis restarted empty three times under 150 GET/s + 50 POST/s while three
   instances heartbeat every second.

The load schedule is seeded (``bench.openloop.schedule``), so runs repeat.

The integration tests (``tests/integration/resilience/test_faults.py``) run the same
functions, shortened. How to read the output: ``bench/FAULTS.md``. Exit code 1 when a check
failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from bench.crash import format_crash, run_crash
from bench.drain import format_drain, run_drain
from bench.faultkit import Check
from bench.hang import format_hang, run_hang
from bench.regrow import format_regrow, run_regrow
from bench.stall import format_stall, run_stall

SCENARIOS = ("crash", "hang", "drain", "stall", "regrow")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="GET/s, and POST/s, (default 200)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    parser.add_argument("--kill-at", type=float, default=10.0, help="the fault starts (default 10 s)")
    parser.add_argument("--restart-at", type=float, default=20.0, help="the fault ends (default 20 s)")
    parser.add_argument(
        "--upstream-client",
        choices=("native", "aiohttp"),
        help="the gateway's UPSTREAM_CLIENT (default: the gateway's own default)",
    )
    parser.add_argument(
        "--recovery-grace",
        type=float,
        help="regrow: the gateway's DISCOVERY_RECOVERY_GRACE (default automatic; 0 shows the table shrink)",
    )
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios to run")
    args = parser.parse_args(argv)
    if not 0 < args.kill_at < args.restart_at < args.duration:
        parser.error("need 0 < --kill-at < --restart-at < --duration")
    args.scenarios = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}: choose from {', '.join(SCENARIOS)}")
    return args


async def run_one(name: str, args: argparse.Namespace) -> tuple[str, list[Check]]:
    """Run scenario ``name``; return its text report and its checks."""
    if name == "crash":
        crash = await run_crash(
            args.rate, args.duration, args.kill_at, args.restart_at, client=args.upstream_client
        )
        return format_crash(crash), crash.checks()
    if name == "hang":
        hang = await run_hang(
            args.rate, args.duration, args.kill_at, args.restart_at, client=args.upstream_client
        )
        return format_hang(hang), hang.checks()
    if name == "stall":
        on, off = await run_stall(hedging=True), await run_stall(hedging=False)
        return format_stall(on) + "\n\n" + format_stall(off), on.checks() + off.checks()
    if name == "regrow":
        regrow = await run_regrow(grace=args.recovery_grace)
        return format_regrow(regrow), regrow.checks()
    drain = await run_drain(client=args.upstream_client)
    return format_drain(drain), drain.checks()


async def main_async(args: argparse.Namespace) -> bool:
    """Run the chosen scenarios and print their reports; return whether every check passed."""
    passed = True
    for name in args.scenarios:
        text, checks = await run_one(name, args)
        print(text + "\n", flush=True)
        passed = passed and all(ok for _, ok in checks)
    return passed


def main(argv: Sequence[str] | None = None) -> int:
    """Run the script; exit 1 when a check failed."""
    return 0 if asyncio.run(main_async(parse_args(argv))) else 1


if __name__ == "__main__":
    sys.exit(main())
