"""WebSocket through the gateway: memory of idle connections, and the latency one hop adds (issue 12).

``python -m bench.ws [--connections 1000] [--rate 100] [--duration 20]``

An echo backend (``bench.delay_backend``) and ``msa-gateway run`` (access log to /dev/null),
both on 127.0.0.1. First ``--connections`` WebSockets are opened through the gateway, each
echoes one message and then stays idle; the gateway's RSS is read before and after
(``/proc``; target: under 30 MiB for 1,000). Then one connection straight to the backend and one
through the gateway each send a 32-byte message ``--rate`` times a second and wait for its echo,
taking turns; the p99 round trip of each and their difference is printed (target: under 1 ms), and
the percentiles of the per-slot difference (less sensitive to a busy machine's stalls), and the
gateway's CPU time per round trip (what the splice itself costs, whatever the stalls).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

from bench.gateway import GatewayLaunch, gateway_command, start_gateway, write_config
from bench.procs import Proc, cpu_seconds, free_port, process_tree, rss_bytes, start
from bench.stream import percentile

MIB = 1024 * 1024


def _config(port: int, connections: int) -> dict[str, object]:
    cap = connections + 10
    return {
        "services": {
            "ws": {
                "instances": [{"host": "127.0.0.1", "port": port}],
                "health_check": {"path": None},
                "websocket": {"max_connections": cap},
            }
        }
    }


async def _open(url: str, n: int) -> list[ClientConnection]:
    async def one(k: int) -> ClientConnection:
        ws = await connect(url, open_timeout=60, ping_interval=None, compression=None)
        await ws.send(f"hello {k}")
        await ws.recv()
        return ws

    sem = asyncio.Semaphore(100)  # no more than 100 handshakes at a time

    async def limited(k: int) -> ClientConnection:
        async with sem:
            return await one(k)

    return list(await asyncio.gather(*(limited(k) for k in range(n))))


async def _rtt(ws: ClientConnection, payload: str) -> float:
    t = time.perf_counter()
    await ws.send(payload)
    await ws.recv()
    return (time.perf_counter() - t) * 1000


async def _measure(gw_port: int, backend_port: int, args: argparse.Namespace) -> int:
    pid = args.gateway_pid
    url = f"ws://127.0.0.1:{gw_port}/ws/echo"
    warm = await _open(url, 10)
    for ws in warm:
        await ws.close()
    await asyncio.sleep(1.0)
    before = rss_bytes(process_tree(pid))
    conns = await _open(url, args.connections)
    await asyncio.sleep(2.0)
    after = rss_bytes(process_tree(pid))
    cost = (after - before) / MIB
    print(
        f"idle connections={len(conns)} gateway RSS before={before / MIB:.1f}MiB after={after / MIB:.1f}MiB "
        f"cost={cost:.1f}MiB ({(after - before) / max(1, len(conns)) / 1024:.1f}KiB each) (target < 30 MiB)"
    )
    await asyncio.gather(*(ws.close() for ws in conns))
    payload = "x" * 32
    direct = await connect(f"ws://127.0.0.1:{backend_port}/", ping_interval=None, compression=None)
    proxied = await connect(url, ping_interval=None, compression=None)
    d: list[float] = []
    g: list[float] = []
    step = 1.0 / args.rate
    idle_from, idle_cpu = time.perf_counter(), cpu_seconds(pid)
    await asyncio.sleep(3.0)  # the gateway's own background CPU, subtracted below
    idle_rate = (cpu_seconds(pid) - idle_cpu) / (time.perf_counter() - idle_from)
    cpu_before = cpu_seconds(pid)
    start_at = time.perf_counter()
    for i in range(int(args.duration * args.rate)):
        due = start_at + i * step
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if i % 2:
            d.append(await _rtt(direct, payload))
            g.append(await _rtt(proxied, payload))
        else:
            g.append(await _rtt(proxied, payload))
            d.append(await _rtt(direct, payload))
    cpu = cpu_seconds(pid) - cpu_before - idle_rate * (time.perf_counter() - start_at)
    await direct.close()
    await proxied.close()
    added = percentile(g, 99) - percentile(d, 99)
    paired = [x - y for x, y in zip(g, d, strict=True)]  # the same slot: the machine's noise is shared
    print(
        f"echo rtt at {args.rate:.0f} msg/s x {len(g)}: direct p50={percentile(d, 50):.3f}ms "
        f"p99={percentile(d, 99):.3f}ms; "
        f"gateway p50={percentile(g, 50):.3f}ms p99={percentile(g, 99):.3f}ms; "
        f"added p99={added:.3f}ms (target < 1 ms); per message (gateway - direct, same slot) "
        f"p50={percentile(paired, 50):.3f}ms p99={percentile(paired, 99):.3f}ms; "
        f"gateway CPU per round trip {cpu / len(g) * 1e6:.0f} µs (two relays; idle"
        f" {idle_rate * 100:.1f}% of a core subtracted; /proc ticks of 10 ms)"
    )
    return 0 if cost < 30 and added < 1.0 else 1


def main(argv: list[str] | None = None) -> int:
    """Run both measurements; exit 1 when a target is missed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--duration", type=float, default=20.0)
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-ws-"))
    backend_port, gw_port = free_port(), free_port()
    procs: list[Proc] = []
    try:
        backend = start("backend", [sys.executable, "-m", "bench.delay_backend", str(backend_port)], workdir)
        procs.append(backend)
        backend.wait_port(backend_port)
        config = write_config(workdir, _config(backend_port, args.connections))
        gateway = start_gateway(
            workdir,
            config,
            gw_port,
            None,
            GatewayLaunch(gateway_command(), log_to_file=False),
            "/health/live",
        )
        procs.append(gateway)
        args.gateway_pid = gateway.pid
        return asyncio.run(_measure(gw_port, backend_port, args))
    finally:
        for proc in procs:
            proc.stop()


if __name__ == "__main__":
    sys.exit(main())
