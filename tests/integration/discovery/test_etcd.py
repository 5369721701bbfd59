"""The etcd provider and registrar against a real etcd on a free loopback port."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import statistics
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import orjson
import pytest

from msa_gateway.discovery.base import Provider, Registrar
from msa_gateway.discovery.etcd import EtcdClient, EtcdProvider, b64
from msa_gateway.discovery.etcd_registry import EtcdRegistrar
from msa_gateway.errors import DiscoveryError
from msa_gateway.model import Discovered, Instance
from msa_gateway.settings import GatewayConfig, Settings
from tests.support.etcd_server import EtcdServer, etcd_server
from tests.support.procs import find_binary, free_port

LOGGER = "msa_gateway.discovery.etcd"


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with etcd_server() as server:
        yield server


@pytest.fixture
def prefix() -> str:
    return f"/msa-test/{uuid.uuid4().hex[:8]}/"


@pytest.fixture
async def client(etcd: EtcdServer) -> AsyncIterator[EtcdClient]:
    c = EtcdClient([etcd.url])
    yield c
    await c.aclose()


@pytest.fixture
async def registrar(etcd: EtcdServer, prefix: str) -> AsyncIterator[EtcdRegistrar]:
    r = EtcdRegistrar(EtcdClient([etcd.url]), prefix)
    yield r
    await r.aclose()


class Watcher:
    """Consume ``provider.watch()`` in a task; remember each snapshot with its arrival time."""

    def __init__(self, provider: EtcdProvider) -> None:
        self.provider = provider
        self.snapshots: list[tuple[float, Discovered]] = []
        self.error: BaseException | None = None
        self._cond = asyncio.Condition()
        self._task = asyncio.create_task(self._run(), name="test-etcd-watcher")

    async def _run(self) -> None:
        try:
            async for snap in self.provider.watch():
                async with self._cond:
                    self.snapshots.append((time.perf_counter(), snap))
                    self._cond.notify_all()
        except Exception as exc:
            async with self._cond:
                self.error = exc
                self._cond.notify_all()

    async def wait_for(
        self, pred: Callable[[Discovered], bool], since: int | None = None, timeout: float = 5.0
    ) -> tuple[float, Discovered]:
        """Return the first snapshot from index ``since`` (default: the latest) on that satisfies ``pred``."""
        if since is None:
            since = max(0, len(self.snapshots) - 1)

        def found() -> tuple[float, Discovered] | None:
            return next((s for s in self.snapshots[since:] if pred(s[1])), None)

        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(lambda: found() is not None or self.error), timeout)
        hit = found()
        if hit is None:
            raise AssertionError(f"watch failed: {self.error!r}")
        return hit

    async def wait_error(self, timeout: float = 5.0) -> BaseException:
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(lambda: self.error is not None), timeout)
        assert self.error is not None
        return self.error

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.provider.aclose()


@pytest.fixture
async def watcher(etcd: EtcdServer, prefix: str) -> AsyncIterator[Watcher]:
    w = Watcher(EtcdProvider(EtcdClient([etcd.url]), prefix))
    await w.wait_for(lambda s: True)
    yield w
    await w.close()


def ids(snap: Discovered, service: str) -> list[str]:
    return [i.id for i in snap.get(service, ())]


async def put(client: EtcdClient, key: str, value: bytes) -> int:
    answer = await client.call("/kv/put", {"key": b64(key), "value": b64(value)})
    return int(answer["header"]["revision"])


def inst(iid: str, port: int = 8001, weight: int = 1) -> Instance:
    return Instance(id=iid, host="127.0.0.1", port=port, weight=weight, source="etcd")


def test_classes_satisfy_the_protocols(etcd: EtcdServer) -> None:
    settings = Settings(etcd_endpoints=f"{etcd.url}, http://127.0.0.1:1", etcd_prefix="/p")
    provider = EtcdProvider.from_settings(settings, GatewayConfig(source="test"))
    assert isinstance(provider, Provider)
    assert provider.name == "etcd"
    assert provider.prefix == "/p/"
    assert isinstance(EtcdRegistrar.from_settings(settings), Registrar)


async def test_registration_reaches_the_next_snapshot_p99_under_1s(
    watcher: Watcher, registrar: EtcdRegistrar
) -> None:
    latencies = []
    for n in range(20):
        iid = f"o{n}"

        def has_it(snap: Discovered, iid: str = iid) -> bool:
            return iid in ids(snap, "orders")

        since = len(watcher.snapshots)
        start = time.perf_counter()
        await registrar.register("orders", inst(iid, 9000 + n), ttl=30)
        seen, snap = await watcher.wait_for(has_it, since, timeout=1.0)
        latencies.append(seen - start)
        assert snap["orders"][-1].source == "etcd"
    assert len(watcher.snapshots[-1][1]["orders"]) == 20
    p99 = sorted(latencies)[math.ceil(0.99 * len(latencies)) - 1]
    print(
        f"etcd registration->snapshot over 20 trials: p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms"
    )
    assert p99 < 1.0


async def test_weight_change_and_deregistration(watcher: Watcher, registrar: EtcdRegistrar) -> None:
    await registrar.register("users", inst("u1", weight=1), ttl=30)
    await watcher.wait_for(lambda s: [i.weight for i in s.get("users", ())] == [1])
    await registrar.register("users", inst("u1", weight=5), ttl=30)
    _, snap = await watcher.wait_for(lambda s: [i.weight for i in s.get("users", ())] == [5])
    assert snap["users"] == (inst("u1", weight=5),)
    assert await registrar.heartbeat("users", "u1", 30), "re-registering keeps the key on the new lease"
    assert await registrar.deregister("users", "u1")
    await watcher.wait_for(lambda s: "users" not in s)
    assert not await registrar.deregister("users", "u1")
    assert not await registrar.heartbeat("users", "u1", 30)


async def test_metadata_and_health_path_come_through(watcher: Watcher, registrar: EtcdRegistrar) -> None:
    full = Instance(
        id="m1",
        host="10.1.2.3",
        port=80,
        weight=2,
        health_path="/hz",
        metadata=(("a", "1"), ("b", "x")),
        source="etcd",
    )
    await registrar.register("meta", full, ttl=30)
    _, snap = await watcher.wait_for(lambda s: "meta" in s)
    assert snap["meta"] == (full,)


async def test_lease_expiry_removes_the_instance_within_ttl_plus_1s(
    watcher: Watcher, registrar: EtcdRegistrar
) -> None:
    ttl = 2.0
    await registrar.register("cart", inst("c1"), ttl=ttl)
    await watcher.wait_for(lambda s: "cart" in s)
    registered = len(watcher.snapshots) - 1
    for _ in range(3):
        await asyncio.sleep(ttl / 2)
        assert await registrar.heartbeat("cart", "c1", ttl), "heartbeat keeps the lease alive"
    last_beat = time.perf_counter()
    assert all("cart" in s for _, s in watcher.snapshots[registered:]), "heartbeats kept it for 1.5 TTLs"
    gone, _ = await watcher.wait_for(lambda s: "cart" not in s, timeout=ttl + 2)
    elapsed = gone - last_beat
    print(f"etcd lease expiry: instance gone {elapsed:.2f} s after the last heartbeat (TTL {ttl} s)")
    assert elapsed <= ttl + 1.0
    assert not await registrar.heartbeat("cart", "c1", ttl)


async def test_compaction_while_watching_rereads_and_stays_correct(
    etcd: EtcdServer, prefix: str, client: EtcdClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    provider = EtcdProvider(EtcdClient([etcd.url]), prefix)
    stream = provider.watch()
    try:
        await put(client, f"{prefix}pay/a", orjson.dumps({"host": "h", "port": 1}))
        first = await anext(stream)
        assert ids(first, "pay") == ["a"]
        # The generator now waits before opening its watch; move on and compact past its start.
        await put(client, f"{prefix}pay/b", orjson.dumps({"host": "h", "port": 2}))
        await client.call("/kv/deleterange", {"key": b64(f"{prefix}pay/a")})
        rev = await put(client, f"{prefix}pay/c", orjson.dumps({"host": "h", "port": 3}))
        await client.call("/kv/compaction", {"revision": str(rev), "physical": True})
        second = await asyncio.wait_for(anext(stream), 5)
        assert ids(second, "pay") == ["b", "c"]
        assert "compacted away; re-reading" in caplog.text
        await put(client, f"{prefix}pay/d", orjson.dumps({"host": "h", "port": 4}))
        third = await asyncio.wait_for(anext(stream), 5)
        assert ids(third, "pay") == ["b", "c", "d"], "the watch goes on after the re-read"
    finally:
        await stream.aclose()
        await provider.aclose()


BAD = {
    "svc/json": b'{"host": "h", "port": ',
    "svc/noport": b'{"host": "h"}',
    "svc/range": b'{"host": "h", "port": 70000}',
    "svc": b'{"host": "h", "port": 1}',
    "health/x": b'{"host": "h", "port": 1}',
}


async def test_bad_data_is_skipped_with_a_log_line_naming_the_key(
    etcd: EtcdServer, prefix: str, client: EtcdClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for suffix, raw in BAD.items():
        await put(client, prefix + suffix, raw)
    await put(client, f"{prefix}svc/good", orjson.dumps({"host": "h", "port": 1}))
    w = Watcher(EtcdProvider(EtcdClient([etcd.url]), prefix))
    try:
        _, first = await w.wait_for(lambda s: True)
        assert dict(first) == {"svc": (Instance(id="good", host="h", port=1, source="etcd"),)}
        for suffix in BAD:
            assert f"skipping key {prefix}{suffix}:" in caplog.text, "initial read names the key"
        caplog.clear()
        for suffix, raw in BAD.items():
            await put(client, prefix + suffix.replace("svc", "svc2"), raw)
        await put(client, f"{prefix}svc/good", b"broken now")
        await put(client, f"{prefix}svc/later", orjson.dumps({"host": "h", "port": 2}))
        _, snap = await w.wait_for(lambda s: "later" in ids(s, "svc"))
        assert ids(snap, "svc") == ["later"], "a good entry turned bad is dropped"
        assert "svc2" not in snap
        for suffix in [*BAD, "svc/good"]:
            key = prefix + (suffix.replace("svc", "svc2") if suffix != "svc/good" else suffix)
            assert f"skipping key {key}:" in caplog.text, "watch events name the key"
        assert w.error is None
    finally:
        await w.close()


async def test_a_transaction_is_one_snapshot(watcher: Watcher, client: EtcdClient, prefix: str) -> None:
    ops = [
        {
            "request_put": {
                "key": b64(f"{prefix}batch/b{i:02}"),
                "value": b64(orjson.dumps({"host": "h", "port": i + 1})),
            }
        }
        for i in range(50)
    ]
    before = len(watcher.snapshots)
    await client.call("/kv/txn", {"success": ops})
    _, snap = await watcher.wait_for(lambda s: "batch" in s, since=before)
    assert len(snap["batch"]) == 50
    assert len(watcher.snapshots) == before + 1, "one watch batch, one snapshot"


async def test_etcdctl_registration_as_documented(etcd: EtcdServer, watcher: Watcher, prefix: str) -> None:
    registrar = EtcdRegistrar(EtcdClient([etcd.url]), prefix)
    etcdctl = [find_binary("etcdctl"), f"--endpoints={etcd.url}"]
    env = {**os.environ, "ETCDCTL_API": "3"}

    def run(*args: str) -> str:
        return subprocess.run([*etcdctl, *args], env=env, check=True, capture_output=True, text=True).stdout

    try:
        lease = run("lease", "grant", "10").split()[1]
        value = '{"host":"10.0.0.5","port":8001,"weight":2,"metadata":{"version":"1.4"}}'
        run("put", f"--lease={lease}", f"{prefix}orders/orders-1", value)
        _, snap = await watcher.wait_for(lambda s: "orders" in s)
        assert snap["orders"] == (
            Instance(
                id="orders-1",
                host="10.0.0.5",
                port=8001,
                weight=2,
                metadata=(("version", "1.4"),),
                source="etcd",
            ),
        )
        assert await registrar.heartbeat("orders", "orders-1", 10), (
            "the registrar finds the lease from the key"
        )
        assert "keepalived" in run("lease", "keep-alive", "--once", lease)
        run("del", f"{prefix}orders/orders-1")
        await watcher.wait_for(lambda s: "orders" not in s)
        run("lease", "revoke", lease)
    finally:
        await registrar.aclose()


async def test_endpoints_are_tried_in_order(etcd: EtcdServer, prefix: str, client: EtcdClient) -> None:
    await put(client, f"{prefix}web/w1", orjson.dumps({"host": "h", "port": 1}))
    dead = f"http://127.0.0.1:{free_port()}"
    w = Watcher(EtcdProvider(EtcdClient([dead, etcd.url]), prefix))
    try:
        await w.wait_for(lambda s: ids(s, "web") == ["w1"])
        await put(client, f"{prefix}web/w2", orjson.dumps({"host": "h", "port": 2}))
        await w.wait_for(lambda s: ids(s, "web") == ["w1", "w2"])
    finally:
        await w.close()


async def test_etcd_killed_mid_watch_raises_and_a_new_watch_works_after_restart() -> None:
    prefix = "/msa-test/outage/"
    with etcd_server() as server:
        client = EtcdClient([server.url])
        provider = EtcdProvider(EtcdClient([server.url]), prefix)
        try:
            await put(client, f"{prefix}inv/i1", orjson.dumps({"host": "h", "port": 1}))
            w = Watcher(provider)
            await w.wait_for(lambda s: ids(s, "inv") == ["i1"])
            server.kill()
            err = await w.wait_error(timeout=5)
            assert isinstance(err, DiscoveryError)
            with pytest.raises(DiscoveryError, match="no etcd endpoint answered"):
                await anext(provider.watch())
            server.start()
            w2 = Watcher(provider)
            await w2.wait_for(lambda s: ids(s, "inv") == ["i1"])
            await put(client, f"{prefix}inv/i2", orjson.dumps({"host": "h", "port": 2}))
            await w2.wait_for(lambda s: ids(s, "inv") == ["i1", "i2"])
            await w2.close()
        finally:
            await client.aclose()
            await provider.aclose()


async def test_a_silent_etcd_is_noticed_by_the_idle_probe() -> None:
    prefix = "/msa-test/silent/"
    with etcd_server() as server:
        client = EtcdClient([server.url])
        provider = EtcdProvider(EtcdClient([server.url], timeout=0.5), prefix, idle_probe=0.3)
        try:
            await put(client, f"{prefix}inv/i1", orjson.dumps({"host": "h", "port": 1}))
            w = Watcher(provider)
            await w.wait_for(lambda s: ids(s, "inv") == ["i1"])
            await asyncio.sleep(1.0)
            assert w.error is None, "an idle but healthy etcd passes the probe"
            server.pause()
            start = time.perf_counter()
            err = await w.wait_error(timeout=3)
            assert isinstance(err, DiscoveryError)
            assert time.perf_counter() - start < 1.5
        finally:
            server.resume()
            await client.aclose()
            await provider.aclose()


async def test_first_snapshot_of_50_services_x_20_instances_is_whole_and_not_quadratic(
    etcd: EtcdServer, prefix: str, client: EtcdClient
) -> None:
    ops = [
        {
            "request_put": {
                "key": b64(f"{prefix}svc{s}/i{i}"),
                "value": b64(
                    orjson.dumps({"host": f"10.0.{s}.{i}", "port": 8000 + i, "metadata": {"zone": "a"}})
                ),
            }
        }
        for s in range(50)
        for i in range(20)
    ]
    for at in range(0, len(ops), 100):
        await client.call("/kv/txn", {"success": ops[at : at + 100]})
    timings = []
    for _ in range(5):
        provider = EtcdProvider(EtcdClient([etcd.url]), prefix)
        stream = provider.watch()
        start = time.perf_counter()
        snap = await anext(stream)
        timings.append(time.perf_counter() - start)
        await stream.aclose()
        await provider.aclose()
        assert len(snap) == 50
        assert all(len(v) == 20 for v in snap.values())
    median = statistics.median(timings)
    print(
        "etcd first snapshot (range + parse + build, 1000 instances):",
        [round(t * 1000, 1) for t in timings],
        "ms",
    )
    assert median < 0.5  # ~30 ms on a quiet machine (printed); this only catches a quadratic blow-up


async def test_an_added_and_a_removed_instance_change_only_their_service(
    watcher: Watcher, registrar: EtcdRegistrar
) -> None:
    for s in range(10):
        await registrar.register(f"svc{s}", inst("a", 8000 + s), ttl=30)
    _, before = await watcher.wait_for(lambda s: len(s) == 10)
    await registrar.register("svc3", inst("b", 9000), ttl=30)
    _, added = await watcher.wait_for(lambda s: ids(s, "svc3") == ["a", "b"])
    assert [s for s in before if added[s] is not before[s]] == ["svc3"], "other services: the same tuples"
    assert await registrar.deregister("svc3", "b")
    _, removed = await watcher.wait_for(lambda s: ids(s, "svc3") == ["a"])
    assert [s for s in added if removed[s] is not added[s]] == ["svc3"]
