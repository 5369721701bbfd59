"""``python -m bench.discovery``: the numbers of issue 3 (service discovery), measured end to end.

1. Snapshot rebuild: ``Runtime.apply`` of 50 services x 20 instances, one instance changing each
   time, with active health checks off and on (measured first, on a small heap), and again after
   ``gc.freeze()``: the spikes are full collections of the whole heap. Target: p99 < 50 ms.
2. Registration -> first request routed to the new instance, through ``msa-gateway run`` processes
   discovering from a real redis-server, a real etcd and the Consul double: ``--trials`` trials each
   (default 20), with one routed service and again with 50 services x 20 instances registered.
   Target: p99 < 1 s (Redis, etcd).
3. Crash: an instance registered by a heartbeating process (``msa-gateway register --heartbeat``,
   ``etcdctl lease keep-alive``) with a 1 s TTL is SIGKILLed with its backend under steady traffic;
   measured: the last attempt the gateway routed to it and when discovery removed it, with the
   default retry/ejection settings and with both off (discovery alone). Target: within TTL + 1 s,
   and no failed client request with the defaults.

The clients, registries and backends share this machine with the gateway, so the figures include
their scheduling noise. Exit status 0 when every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import aiohttp
from tests.support.backend import BackendProcess, running_backends
from tests.support.etcd_server import etcd_server
from tests.support.gateway import gateway_process, serve_gateway
from tests.support.redis_server import running_redis
from tests.support.registries import ConsulRegistry, EtcdRegistry, RedisRegistry, Registry
from tests.support.traffic import AttemptClock, Traffic, by, eventually

from msa_gateway.model import Discovered, Instance
from msa_gateway.runtime import Runtime
from msa_gateway.settings import Settings, parse_config

NO_PROBES: dict[str, Any] = {"defaults": {"health_check": {"path": None}}}
DISCOVERY_ONLY: dict[str, Any] = {
    "defaults": {
        "health_check": {"path": None},
        "retry": {"max_retries": 0},
        "outlier": {"consecutive_failures": 0},
    }
}
REGISTRATION_TARGET = 1.0
REBUILD_TARGET = 0.050
TTL = 1.0


@dataclass
class Report:
    """Every figure measured, with the targets each must meet."""

    lines: list[str] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)

    def add(self, line: str, ok: bool | None = None) -> None:
        mark = "" if ok is None else ("  ok" if ok else "  MISSED")
        self.lines.append(line + mark)
        print(line + mark, flush=True)
        if ok is False:
            self.misses.append(line)


def percentile(values: Sequence[float], q: float) -> float:
    """Return the nearest-rank ``q`` percentile (p99 of 20 values is the maximum)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return ordered[int(rank) - 1]


def summary(values: Sequence[float]) -> str:
    ms = [v * 1000 for v in values]
    p50, p99 = statistics.median(ms), percentile(ms, 99)
    return f"n={len(ms)} p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(ms):.1f} ms"


@contextlib.asynccontextmanager
async def open_registry(kind: str, workdir: Path) -> AsyncIterator[Registry]:
    """Start the registry of ``kind`` and yield its adapter."""
    if kind == "redis":
        with running_redis(workdir) as server:
            async with RedisRegistry.running(server) as reg:
                yield reg
    elif kind == "etcd":
        with etcd_server() as etcd:
            async with EtcdRegistry.running(etcd) as reg:
                yield reg
    else:
        async with ConsulRegistry.running() as reg:
            yield reg


def filler(service: int, index: int) -> Instance:
    """Return instance ``index`` of the filler service ``service`` (never contacted: probes are off)."""
    return Instance(id=f"i{index:02d}", host="127.0.0.1", port=20000 + service * 20 + index)


async def registration_trials(
    registry: Registry, a: BackendProcess, b: BackendProcess, trials: int, fillers: int
) -> tuple[list[float], list[float], int]:
    """Return registration -> first routed request and deregistration -> last routed request, and failures."""
    await registry.register("web", a.instance())
    for s in range(fillers):
        for i in range(20):
            await registry.register(f"svc-{s:02d}", filler(s, i))
    joined: list[float] = []
    left: list[float] = []
    with gateway_process(NO_PROBES, **registry.env()) as gw:
        async with aiohttp.ClientSession() as http, Traffic(http, f"{gw.url}/web/echo") as traffic:
            await traffic.wait_for(by("a"), since=0.0, timeout=30.0)
            for k in range(trials):
                t0 = time.perf_counter()
                await registry.register("web", b.instance(id=f"b-{k}"))
                hit = await traffic.wait_for(by("b"), since=t0, timeout=5.0)
                joined.append(hit.done - t0)
                t1 = time.perf_counter()
                await registry.deregister("web", f"b-{k}")
                await _only(traffic, "a", since=t1, run=10)
                to_b = [h.done for h in traffic.since(t1) if h.instance == "b"]
                left.append(max(to_b, default=t1) - t1)
            failures = len(traffic.failures())
    for s in range(fillers):
        for i in range(20):
            await registry.deregister(f"svc-{s:02d}", f"i{i:02d}")
    await registry.deregister("web", "a")
    return joined, left, failures


async def _only(traffic: Traffic, instance: str, since: float, run: int) -> None:
    """Wait until the last ``run`` answers since ``since`` all came from ``instance``."""
    deadline = time.perf_counter() + 5.0
    while True:
        hits = traffic.since(since)
        if len(hits) >= run and all(h.instance == instance for h in hits[-run:]):
            return
        if time.perf_counter() > deadline:
            raise RuntimeError(f"still routed elsewhere than {instance} 5 s after deregistration")
        await asyncio.sleep(0.005)


@dataclass(frozen=True)
class CrashResult:
    """One crash trial."""

    last_attempt: float
    removed: float
    failed: int
    requests: int


async def crash_trial(registry: Registry, a: BackendProcess, config: dict[str, Any]) -> CrashResult:
    """Kill a heartbeating registration and its backend under traffic; see when routing to it stops."""
    await registry.register("web", a.instance())
    with BackendProcess("crash") as crash:
        async with serve_gateway(config, settings=registry.settings()) as gw, aiohttp.ClientSession() as http:

            def ids() -> set[str]:
                return {i.id for i in gw.runtime.instances_of("web").values()}

            with registry.heartbeat_process("web", crash.instance(), TTL) as beating:
                async with Traffic(http, f"{gw.url}/web/echo") as traffic:
                    await traffic.wait_for(by("crash"), since=0.0, timeout=10.0)
                    await asyncio.sleep(2 * TTL)
                    clock = AttemptClock(gw, "web")
                    try:
                        killed = time.perf_counter()
                        beating.kill()
                        crash.kill()
                        await eventually(lambda: "crash" in ids(), TTL + 5.0, expect=False)
                        removed = time.perf_counter() - killed
                        await traffic.wait_count(since=time.perf_counter(), count=30, timeout=5.0)
                    finally:
                        await clock.aclose()
                    after = traffic.since(killed)
    last = (clock.last_growth or killed) - killed
    return CrashResult(last, removed, sum(1 for h in after if h.status != 200), len(after))


def big_snapshot(changed: int) -> Discovered:
    """Return 50 services x 20 instances; instance 0 of service 0 gets port ``changed``."""
    services = {f"svc-{s:02d}": tuple(filler(s, i) for i in range(20)) for s in range(50)}
    services["svc-00"] = (Instance(id="i00", host="127.0.0.1", port=changed), *services["svc-00"][1:])
    return MappingProxyType(services)


async def rebuild_times(probes: bool, rounds: int) -> list[float]:
    """Time ``Runtime.apply`` over ``rounds`` snapshots of 1000 instances, each differing by one."""
    config = parse_config({} if probes else NO_PROBES, "bench.yaml")

    class Quiet:
        name = "bench"

        async def watch(self) -> AsyncIterator[Discovered]:
            await asyncio.Event().wait()
            yield MappingProxyType({})

        async def aclose(self) -> None:
            """Nothing to close."""

    rt = Runtime(Settings(_env_file=None), config, provider=Quiet())  # type: ignore[call-arg]
    times = []
    try:
        rt.apply(big_snapshot(1))
        for r in range(rounds):
            snapshot = big_snapshot(2 + r % 2)
            t0 = time.perf_counter()
            rt.apply(snapshot)
            times.append(time.perf_counter() - t0)
            await asyncio.sleep(0.01)  # let probe tasks start, as they would between changes
    finally:
        await rt.aclose()
    return times


async def main_async(args: argparse.Namespace) -> int:
    report = Report()
    report.add(f"== 1. Runtime.apply of 50 services x 20 instances ({args.rounds} rounds)")
    gc.collect()  # measured first, on a small heap: the figures are the rebuild, not a stranger's GC
    for probes in (False, True):
        times = await rebuild_times(probes, args.rounds)
        report.add(
            f"  active health checks {'on ' if probes else 'off'}: {summary(times)}",
            percentile(times, 99) < REBUILD_TARGET,
        )
    gc.freeze()  # what a gateway could do after start-up: full collections skip the import-time heap
    try:
        times = await rebuild_times(True, args.rounds)
    finally:
        gc.unfreeze()
    report.add(f"  active health checks on, after gc.freeze(): {summary(times)}")
    kinds = [k for k in args.registries.split(",") if k]
    with tempfile.TemporaryDirectory(prefix="bench-discovery-") as tmp, running_backends("a", "b") as (a, b):
        report.add(f"== 2. registration -> first routed request ({args.trials} trials, gateway process)")
        for kind in kinds:
            for fillers in (0, 50):
                async with open_registry(kind, Path(tmp)) as registry:
                    joined, left, failures = await registration_trials(registry, a, b, args.trials, fillers)
                label = f"{kind:6} {'50x20 + ' if fillers else ''}1 service"
                target = kind != "consul"
                report.add(
                    f"  {label:24} registration -> first routed  {summary(joined)}",
                    percentile(joined, 99) < REGISTRATION_TARGET if target else None,
                )
                report.add(f"  {label:24} deregistration -> last routed {summary(left)}")
                report.add(f"  {label:24} failed client requests: {failures}", failures == 0)
        if not args.skip_crash:
            report.add(
                f"== 3. crash -> no more requests routed to it (TTL {TTL:g} s, {args.crash_trials} trials)"
            )
            for kind in [k for k in kinds if k != "consul"]:
                for mode, config in (("defaults", NO_PROBES), ("discovery-only", DISCOVERY_ONLY)):
                    results = []
                    for _ in range(args.crash_trials):
                        async with open_registry(kind, Path(tmp)) as registry:
                            results.append(await crash_trial(registry, a, config))
                    last = max(r.last_attempt for r in results)
                    removed = max(r.removed for r in results)
                    failed = sum(r.failed for r in results)
                    total = sum(r.requests for r in results)
                    report.add(
                        f"  {kind:6} {mode:15} last attempt <= {last:.2f} s, removed <= {removed:.2f} s "
                        f"after the kill",
                        last <= TTL + 1.0,
                    )
                    report.add(
                        f"  {kind:6} {mode:15} failed client requests: {failed} of {total}",
                        failed == 0 if mode == "defaults" else None,
                    )
    if report.misses:
        print(f"\n{len(report.misses)} target(s) missed", flush=True)
        return 1
    print("\nall targets met", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.discovery", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trials", type=int, default=20, help="registration trials per registry (default 20)"
    )
    parser.add_argument("--crash-trials", type=int, default=3, help="crash trials per registry and mode")
    parser.add_argument("--rounds", type=int, default=50, help="Runtime.apply rounds (default 50)")
    parser.add_argument("--registries", default="redis,etcd,consul", help="comma-separated (default: all)")
    parser.add_argument("--skip-crash", action="store_true", help="skip the crash trials (the slowest part)")
    args = parser.parse_args(argv)
    logging.getLogger("msa_gateway").setLevel(logging.ERROR)  # the in-process gateway's warnings
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
