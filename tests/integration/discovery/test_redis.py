"""The Redis provider and registrar against a real ``redis-server`` on a free loopback port."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from msa_gateway.discovery.base import Provider, Registrar
from msa_gateway.discovery.redis import RedisProvider
from msa_gateway.discovery.redis_registry import (
    RedisRegistrar,
    ServiceRegistration,
    connect,
    expiry_key,
    instances_key,
    services_key,
)
from msa_gateway.discovery.registry_cli import add_commands
from msa_gateway.errors import DiscoveryError
from msa_gateway.model import Discovered, Instance
from msa_gateway.settings import GatewayConfig
from tests.support.procs import REPO, python_env
from tests.support.redis_server import RedisServer, redis_server_fixture  # noqa: F401

Predicate = Callable[[Discovered], bool]


class Watcher:
    """Run ``provider.watch()`` in a task; keep every snapshot with the time it arrived."""

    def __init__(self, provider: RedisProvider) -> None:
        self.provider = provider
        self.snapshots: list[tuple[float, Discovered]] = []
        self.error: BaseException | None = None
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name="test-redis-watch")

    async def _run(self) -> None:
        try:
            async for snap in self.provider.watch():
                self.snapshots.append((time.perf_counter(), snap))
                self._changed.set()
        except BaseException as exc:
            self.error = exc
            self._changed.set()
            raise

    @property
    def latest(self) -> Discovered:
        assert self.snapshots, "no snapshot yet"
        return self.snapshots[-1][1]

    async def wait_for(self, pred: Predicate, timeout: float = 3.0) -> float:
        """Return the arrival time of the first snapshot, from the latest on, that satisfies ``pred``."""
        seen = max(0, len(self.snapshots) - 1)
        deadline = time.perf_counter() + timeout
        while True:
            for at, snap in self.snapshots[seen:]:
                if pred(snap):
                    return at
            seen = len(self.snapshots)
            if self.error is not None:
                raise AssertionError(f"watch failed: {self.error!r}")
            self._changed.clear()
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise AssertionError(f"no matching snapshot within {timeout}s; latest: {self.snapshots[-1:]}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, DiscoveryError):
            await self.task


def has(service: str, instance_id: str, **attrs: object) -> Predicate:
    def pred(snap: Discovered) -> bool:
        for inst in snap.get(service, ()):
            if inst.id == instance_id:
                return all(getattr(inst, k) == v for k, v in attrs.items())
        return False

    return pred


def lacks(service: str, instance_id: str) -> Predicate:
    def pred(snap: Discovered) -> bool:
        return not has(service, instance_id)(snap)

    return pred


def inst(instance_id: str, port: int = 9000, **kw: object) -> Instance:
    return Instance(id=instance_id, host="127.0.0.1", port=port, source="redis", **kw)  # type: ignore[arg-type]


@pytest.fixture
async def registrar(redis_server: RedisServer) -> AsyncIterator[RedisRegistrar]:
    reg = RedisRegistrar.from_settings(redis_server.settings())
    yield reg
    await reg.aclose()


@pytest.fixture
async def provider(redis_server: RedisServer) -> AsyncIterator[RedisProvider]:
    prov = RedisProvider.from_settings(redis_server.settings(), GatewayConfig(source="test"))
    yield prov
    await prov.aclose()


@pytest.fixture
async def watcher(provider: RedisProvider) -> AsyncIterator[Watcher]:
    w = Watcher(provider)
    await w.wait_for(lambda s: True)
    yield w
    await w.close()


async def test_classes_implement_the_protocols(provider: RedisProvider, registrar: RedisRegistrar) -> None:
    assert isinstance(provider, Provider)
    assert isinstance(registrar, Registrar)
    assert provider.name == "redis"


async def test_registration_reaches_the_next_snapshot_within_1s_p99_of_20(
    watcher: Watcher, registrar: RedisRegistrar
) -> None:
    latencies = []
    for i in range(20):
        start = time.perf_counter()
        await registrar.register("users", inst(f"u{i}", 9000 + i, health_path="/h"), ttl=30)
        latencies.append(await watcher.wait_for(has("users", f"u{i}")) - start)
    p99 = sorted(latencies)[math.ceil(0.99 * len(latencies)) - 1]
    p50 = statistics.median(latencies)
    print(f"\nredis registration->snapshot: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    assert p99 < 1.0
    got = {i.id: i for i in watcher.latest["users"]}
    assert got["u3"] == inst("u3", 9003, health_path="/h")


async def test_weight_change_and_deregistration_show_up(watcher: Watcher, registrar: RedisRegistrar) -> None:
    await registrar.register("orders", inst("o1", weight=1, metadata=(("v", "1"),)), ttl=30)
    await watcher.wait_for(has("orders", "o1", weight=1))
    await registrar.register("orders", inst("o1", weight=5, metadata=(("v", "2"),)), ttl=30)
    await watcher.wait_for(has("orders", "o1", weight=5, metadata=(("v", "2"),)), timeout=1.0)
    await registrar.register("orders", inst("o2"), ttl=30)
    await watcher.wait_for(has("orders", "o2"), timeout=1.0)
    assert await registrar.deregister("orders", "o1") is True
    await watcher.wait_for(lambda s: [i.id for i in s.get("orders", ())] == ["o2"], timeout=1.0)
    assert await registrar.deregister("orders", "o1") is False
    assert await registrar.deregister("orders", "o2") is True
    await watcher.wait_for(lambda s: "orders" not in s, timeout=1.0)


async def test_heartbeats_do_not_produce_new_snapshots(watcher: Watcher, registrar: RedisRegistrar) -> None:
    await registrar.register("users", inst("a"), ttl=5)
    await watcher.wait_for(has("users", "a"))
    count = len(watcher.snapshots)
    for _ in range(5):
        assert await registrar.heartbeat("users", "a", ttl=5) is True
    await registrar.register("users", inst("b"), ttl=5)  # a change after the heartbeats, to wait on
    await watcher.wait_for(has("users", "b"))
    assert len(watcher.snapshots) == count + 1


async def test_instance_that_stops_heartbeating_disappears_within_ttl_plus_1s(
    watcher: Watcher, registrar: RedisRegistrar, redis_server: RedisServer
) -> None:
    ttl = 1.0
    await registrar.register("users", inst("keep"), ttl=30)
    await registrar.register("users", inst("crash"), ttl=ttl)
    last_refresh = time.perf_counter()
    await watcher.wait_for(has("users", "crash"))
    gone_at = await watcher.wait_for(lacks("users", "crash"), timeout=ttl + 2)
    elapsed = gone_at - last_refresh
    print(f"\nredis expiry: instance gone {elapsed:.3f} s after its last refresh (ttl {ttl} s)")
    assert ttl - 0.05 <= elapsed <= ttl + 1.0
    assert has("users", "keep")(watcher.latest)
    assert await registrar.heartbeat("users", "crash", ttl=ttl) is False
    async with Redis(port=redis_server.port) as raw:
        assert await raw.hexists(instances_key("msa-gateway", "users"), "crash") == 0  # purged


async def test_keys_of_a_fully_crashed_service_expire(
    registrar: RedisRegistrar, redis_server: RedisServer
) -> None:
    await registrar.register("temp", inst("t1"), ttl=0.3)
    async with Redis(port=redis_server.port) as raw:
        assert 0 < await raw.pttl(instances_key("msa-gateway", "temp")) <= 300
        assert 0 < await raw.pttl(expiry_key("msa-gateway", "temp")) <= 300
        await registrar.register("perm", inst("p1"), ttl=math.inf)
        assert await raw.pttl(instances_key("msa-gateway", "perm")) == -1
        deadline = time.monotonic() + 2
        while await raw.exists(instances_key("msa-gateway", "temp"), expiry_key("msa-gateway", "temp")):
            assert time.monotonic() < deadline, "service keys outlived their last instance"
            await asyncio.sleep(0.05)
        await registrar.register("perm", inst("p2"), ttl=30)  # prunes names whose keys are gone
        assert await raw.smembers(services_key("msa-gateway")) == {b"perm"}


async def test_service_registration_heartbeats_then_deregisters(
    watcher: Watcher, registrar: RedisRegistrar
) -> None:
    reg = ServiceRegistration(registrar, "users", inst("helper"), ttl=0.6)
    assert reg.interval == pytest.approx(0.2)
    async with reg:
        await watcher.wait_for(has("users", "helper"))
        deadline = time.monotonic() + 3
        while reg.heartbeats < 6:  # > 2 TTLs
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert has("users", "helper")(watcher.latest)
        assert await registrar.heartbeat("users", "helper", ttl=0.6) is True
    await watcher.wait_for(lacks("users", "helper"), timeout=1.0)


async def test_service_registration_registers_again_after_expiry(registrar: RedisRegistrar) -> None:
    async with ServiceRegistration(registrar, "users", inst("late"), ttl=0.3, interval=0.5) as reg:
        deadline = time.monotonic() + 3
        while reg.heartbeats < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert await registrar.heartbeat("users", "late", ttl=5) is True  # back after re-registering


async def test_two_providers_on_one_redis_both_see_a_registration_within_1s(
    redis_server: RedisServer, registrar: RedisRegistrar, watcher: Watcher
) -> None:
    other = RedisProvider.from_settings(redis_server.settings(), GatewayConfig(source="test"))
    second = Watcher(other)
    try:
        await second.wait_for(lambda s: True)
        start = time.perf_counter()
        await registrar.register("shared", inst("s1"), ttl=30)
        first_at = await watcher.wait_for(has("shared", "s1"), timeout=1.0)
        second_at = await second.wait_for(has("shared", "s1"), timeout=1.0)
        assert max(first_at, second_at) - start < 1.0
    finally:
        await second.close()
        await other.aclose()


async def test_legacy_service_hashes_are_read(redis_server: RedisServer) -> None:
    async with Redis(port=redis_server.port) as raw:
        await raw.hset("service:legacy", mapping={"a": "127.0.0.1:9001", "b": "[::1]:9002"})
        await raw.set("service:not-a-hash", "x")
        provider = RedisProvider(connect(redis_server.settings()), resync_interval=0.2)
        w = Watcher(provider)
        try:
            await w.wait_for(has("legacy", "a", host="127.0.0.1", port=9001))
            assert [(i.id, i.host, i.port, i.weight) for i in w.latest["legacy"]] == [
                ("a", "127.0.0.1", 9001, 1),
                ("b", "::1", 9002, 1),
            ]
            await raw.hset("service:later", "x", "127.0.0.1:9003")  # no event: found by the resync
            await w.wait_for(has("later", "x", port=9003), timeout=1.0)
            await raw.hdel("service:legacy", "a")
            await w.wait_for(lacks("legacy", "a"), timeout=1.0)
        finally:
            await w.close()
            await provider.aclose()


CLIENT_COMMANDS = ("evalsha", "eval", "scan", "script|load", "script")


async def command_calls(raw: Redis) -> tuple[int, int]:
    """Return (commands clients sent, all commands including those scripts ran), without INFO itself."""
    stats = await raw.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    calls.pop("info", None)
    return sum(calls.get(c, 0) for c in CLIENT_COMMANDS), sum(calls.values())


async def test_original_layout_changes_show_up_within_1s_and_idle_polling_is_cheap(
    redis_server: RedisServer,
) -> None:
    provider = RedisProvider(connect(redis_server.settings()))  # the defaults: resync 5 s, poll 0.5 s
    w = Watcher(provider)
    delays: dict[str, float] = {}
    try:
        await w.wait_for(lambda s: True)
        async with Redis(port=redis_server.port) as raw:

            async def timed(what: str, write: Awaitable[object], pred: Predicate) -> None:
                start = time.perf_counter()
                await write
                delays[what] = await w.wait_for(pred, timeout=1.0) - start

            await timed("new key", raw.hset("service:old", "a", "127.0.0.1:9001"), has("old", "a", port=9001))
            await timed("new field", raw.hset("service:old", "b", "127.0.0.1:9002"), has("old", "b"))
            await timed(
                "new value", raw.hset("service:old", "a", "127.0.0.1:9005"), has("old", "a", port=9005)
            )
            await timed("field removed", raw.hdel("service:old", "b"), lacks("old", "b"))
            await timed("key deleted", raw.delete("service:old"), lambda s: "old" not in s)

            snapshots = len(w.snapshots)
            client_before, all_before = await command_calls(raw)
            started = time.perf_counter()
            await asyncio.sleep(5.5)  # the measuring window: one resync period with nothing changing
            elapsed = time.perf_counter() - started
            client_after, all_after = await command_calls(raw)
    finally:
        await w.close()
        await provider.aclose()
    client_rate = (client_after - client_before) / elapsed
    all_rate = (all_after - all_before) / elapsed
    print(
        "\noriginal layout: change -> snapshot "
        + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in delays.items())
        + f"; idle: {client_rate:.1f} commands/s sent ({all_rate:.1f}/s counting those inside scripts)"
    )
    assert len(w.snapshots) == snapshots, "nothing changed, so no new snapshot"
    assert client_rate <= 2.6, "one fingerprint poll per 0.5 s plus one SCAN and read per 5 s"


async def test_bad_data_is_skipped_with_a_log_line_naming_the_key(
    registrar: RedisRegistrar, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="msa_gateway.discovery.redis")
    ikey, ekey = instances_key("msa-gateway", "users"), expiry_key("msa-gateway", "users")
    async with Redis(port=redis_server.port) as raw:
        await raw.sadd(services_key("msa-gateway"), "users")
        await raw.hset(
            ikey,
            mapping={
                "json": "{not json",
                "noport": '{"host": "127.0.0.1"}',
                "range": '{"host": "127.0.0.1", "port": 70000}',
            },
        )
        await raw.zadd(ekey, {"json": "+inf", "noport": "+inf", "range": "+inf"})
        await raw.hset("service:old", mapping={"x": "garbage", "y": "127.0.0.1:9005"})
    await registrar.register("users", inst("good"), ttl=30)
    provider = RedisProvider(connect(redis_server.settings()), resync_interval=0.2)
    watcher = Watcher(provider)
    try:
        await watcher.wait_for(lambda s: has("users", "good")(s) and has("old", "y")(s))
        assert [i.id for i in watcher.latest["users"]] == ["good"]
        assert [i.id for i in watcher.latest["old"]] == ["y"]
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        for field, reason in (
            ("json", "malformed JSON"),
            ("noport", "port: missing"),
            ("range", "port: must be an integer 1-65535, not 70000"),
        ):
            assert any(f"{ikey} field '{field}'" in line and reason in line for line in lines), lines
        assert any("service:old field 'x'" in line for line in lines), lines
        assert len(lines) == 4
        await registrar.register("users", inst("good2"), ttl=30)  # still running, and quiet: warned once
        await watcher.wait_for(has("users", "good2"), timeout=1.0)
        await asyncio.sleep(0.5)  # span two resyncs, which must not repeat the warnings
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 4
    finally:
        await watcher.close()
        await provider.aclose()


async def test_redis_killed_mid_watch_raises_and_a_new_watch_recovers(
    redis_server: RedisServer, registrar: RedisRegistrar
) -> None:
    provider = RedisProvider.from_settings(redis_server.settings(), GatewayConfig(source="t"))
    try:
        await registrar.register("users", inst("a"), ttl=30)
        w = Watcher(provider)
        await w.wait_for(has("users", "a"))
        killed = time.perf_counter()
        redis_server.stop(kill=True)
        with pytest.raises(DiscoveryError, match=r"redis at 127\.0\.0\.1"):
            await asyncio.wait_for(w.task, 2.0)
        print(
            f"\nredis outage: watch raised DiscoveryError {time.perf_counter() - killed:.3f} s after the kill"
        )
        with pytest.raises(DiscoveryError):  # still down: a new watch fails too, fast
            await asyncio.wait_for(anext(aiter(provider.watch())), 5.0)
        redis_server.start()
        again = Watcher(provider)
        try:
            await again.wait_for(lambda s: s == {})  # no persistence: empty after the restart
            await registrar.register("users", inst("b"), ttl=30)
            await again.wait_for(has("users", "b"), timeout=1.0)
        finally:
            await again.close()
    finally:
        await provider.aclose()


async def test_snapshot_of_50_services_x_20_instances_is_whole_and_not_quadratic(
    provider: RedisProvider, registrar: RedisRegistrar
) -> None:
    meta = (("zone", "a"), ("version", "1.2.3"))
    for s in range(50):
        await asyncio.gather(
            *(
                registrar.register(f"svc{s:02d}", inst(f"i{i:02d}", 10000 + i, metadata=meta), ttl=60)
                for i in range(20)
            )
        )
    times = []
    for _ in range(10):
        start = time.perf_counter()
        snapshot = await provider.read()
        times.append(time.perf_counter() - start)
    assert len(snapshot) == 50
    assert all(len(v) == 20 for v in snapshot.values())
    median = statistics.median(times)
    print(f"\nredis 50x20 full read+parse: median {median * 1000:.1f} ms, max {max(times) * 1000:.1f} ms")
    assert median < 0.5  # a few ms on a quiet machine (printed); this only catches a blow-up


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="msa-gateway")
    add_commands(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


CLI_SNIPPET = """
import argparse, sys
from msa_gateway.discovery.registry_cli import add_commands
parser = argparse.ArgumentParser(prog="msa-gateway")
add_commands(parser.add_subparsers(required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


def cli_env(server: RedisServer) -> dict[str, str]:
    return python_env(
        SERVICE_DISCOVERY_TYPE="redis",
        REDIS_HOST="127.0.0.1",
        REDIS_PORT=str(server.port),
        REDIS_URL="",
        REDIS_DB="0",
    )


async def test_cli_register_and_deregister(
    watcher: Watcher, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in cli_env(redis_server).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("REDIS_URL")
    argv = ["register", "cli", "--host", "127.0.0.1", "--port", "9100", "--weight", "3"]
    argv += ["--meta", "zone=a", "v=2", "--health-path", "/health"]
    assert await asyncio.to_thread(run_cli, argv) == 0
    await watcher.wait_for(
        has("cli", "127.0.0.1:9100", weight=3, metadata=(("v", "2"), ("zone", "a")), health_path="/health")
    )
    assert await asyncio.to_thread(run_cli, ["deregister", "cli", "127.0.0.1:9100"]) == 0
    await watcher.wait_for(lacks("cli", "127.0.0.1:9100"), timeout=1.0)
    assert await asyncio.to_thread(run_cli, ["deregister", "cli", "127.0.0.1:9100"]) == 1
    assert await asyncio.to_thread(run_cli, ["register", "health", "--host", "h", "--port", "1"]) == 2
    assert await asyncio.to_thread(run_cli, ["register", "x", "--host", "h", "--port", "0"]) == 2


async def test_cli_heartbeat_process_sigterm_deregisters_and_sigkill_expires(
    watcher: Watcher, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = cli_env(redis_server)
    env.pop("REDIS_URL")
    base = [sys.executable, "-c", CLI_SNIPPET, "register", "hb", "--host", "127.0.0.1", "--heartbeat"]
    polite = subprocess.Popen([*base, "--port", "9200", "--ttl", "1"], env=env, cwd=REPO)
    crash = subprocess.Popen([*base, "--port", "9201", "--ttl", "1"], env=env, cwd=REPO)
    try:
        await watcher.wait_for(
            lambda s: {i.id for i in s.get("hb", ())} == {"127.0.0.1:9200", "127.0.0.1:9201"}, timeout=10
        )
        await asyncio.sleep(1.5)  # longer than the TTL: heartbeats keep both alive
        assert len(watcher.latest["hb"]) == 2
        polite.terminate()
        assert await asyncio.to_thread(polite.wait, 5) == 0
        await watcher.wait_for(lacks("hb", "127.0.0.1:9200"), timeout=1.0)  # deregistered, not expired
        crash.kill()
        killed = time.perf_counter()
        gone = await watcher.wait_for(lacks("hb", "127.0.0.1:9201"), timeout=3.0)
        assert gone - killed <= 1.0 + 1.0
    finally:
        for proc in (polite, crash):
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
