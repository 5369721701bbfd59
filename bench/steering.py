"""p2c_ewma against round_robin when one instance turns slow (issue 12).

``python -m bench.steering [--rate 200] [--duration 30] [--slow-ms 50] [--warmup 5]``

Three backends (``bench.delay_backend``), one of which adds ``--slow-ms`` to every answer, are
registered twice in one gateway: service ``rr`` balanced by ``round_robin`` and service ``p2c``
by ``p2c_ewma``. An open-loop load (``bench.openloop``) sends ``--rate`` requests/s to each
service at the same time, so both see the same machine; latencies of the first ``--warmup``
seconds are left out. Prints p50/p99/max per service, the slow instance's share, and the
ratio p99(p2c_ewma) / p99(round_robin) (the target: at most 1/3). A ``generator lag`` p99 of more
than a few ms means the machine stalled the load generator itself: run again on a quieter machine.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from bench.gateway import GatewayLaunch, gateway_command, start_gateway, write_config
from bench.openloop import OpenLoop, Stream
from bench.procs import Proc, free_port, start
from bench.stream import percentile


def _config(ports: list[int]) -> dict[str, object]:
    instances = [{"host": "127.0.0.1", "port": p} for p in ports]
    common = {"instances": instances, "health_check": {"path": None}}
    return {
        "services": {"rr": {**common, "balancer": "round_robin"}, "p2c": {**common, "balancer": "p2c_ewma"}}
    }


async def _load(port: int, rate: float, duration: float) -> list:  # type: ignore[type-arg]
    streams = [Stream("rr", "GET", "/rr/x", rate), Stream("p2c", "GET", "/p2c/x", rate)]
    async with OpenLoop(f"http://127.0.0.1:{port}", streams, duration) as load:
        return await load.run()


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; exit 1 when p2c_ewma's p99 is above a third of round_robin's."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--slow-ms", type=float, default=50.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-steering-"))
    ports = [free_port() for _ in range(3)]
    procs: list[Proc] = []
    try:
        for n, p in enumerate(ports):
            delay = str(args.slow_ms if n == 2 else 0)
            procs.append(
                start(f"backend{n}", [sys.executable, "-m", "bench.delay_backend", str(p), delay], workdir)
            )
        for proc, p in zip(procs, ports, strict=True):
            proc.wait_port(p)
        gw_port = free_port()
        config = write_config(workdir, _config(ports))
        launch = GatewayLaunch(gateway_command(), log_to_file=False)
        procs.append(start_gateway(workdir, config, gw_port, None, launch, "/rr/x"))
        shots = asyncio.run(_load(gw_port, args.rate, args.duration))
    finally:
        for proc in procs:
            proc.stop()
    p99 = {}
    for name in ("rr", "p2c"):
        mine = [s for s in shots if s.stream == name and s.due >= args.warmup]
        ok = [s.latency * 1000 for s in mine if s.ok]
        slow = sum(1 for s in mine if s.instance == str(ports[2]))
        p99[name] = percentile(ok, 99)
        print(
            f"{name:4} requests={len(mine)} failed={len(mine) - len(ok)} p50={percentile(ok, 50):.2f}ms "
            f"p99={p99[name]:.2f}ms max={max(ok):.2f}ms slow_share={slow / max(1, len(mine)):.1%} "
            f"generator lag p99={percentile([s.lag * 1000 for s in mine], 99):.2f}ms"
        )
    ratio = p99["p2c"] / p99["rr"]
    print(f"p99 p2c_ewma / round_robin = {ratio:.3f} (target <= 0.333)")
    return 0 if ratio <= 1 / 3 else 1


if __name__ == "__main__":
    sys.exit(main())
