"""ConsulProvider against the Consul HTTP API double (a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import statistics
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from msa_gateway.discovery.base import Provider
from msa_gateway.discovery.consul import ConsulProvider
from msa_gateway.errors import DiscoveryError
from msa_gateway.model import Discovered
from tests.support.consul_double import AclPolicy, ConsulDouble

Snapshot = Discovered


class Collector:
    """Consume ``provider.watch()`` in a named task, keeping every snapshot and the final error."""

    def __init__(self, provider: ConsulProvider) -> None:
        self.snapshots: list[Snapshot] = []
        self.stamps: list[float] = []
        self.error: BaseException | None = None
        self._new = asyncio.Event()
        self._task = asyncio.create_task(self._run(provider.watch()), name="test-consul-collector")

    async def _run(self, it: AsyncIterator[Snapshot]) -> None:
        try:
            async for snap in it:
                self.snapshots.append(snap)
                self.stamps.append(time.perf_counter())
                self._new.set()
        except Exception as exc:
            self.error = exc
            self._new.set()

    @property
    def last(self) -> Snapshot:
        return self.snapshots[-1]

    async def until(self, pred: Callable[[Snapshot], bool], timeout: float = 5.0) -> Snapshot:
        """Return the first snapshot (latest first checked) satisfying ``pred``."""
        deadline = time.monotonic() + timeout
        while True:
            if self.snapshots and pred(self.last):
                return self.last
            if self.error is not None:
                raise self.error
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching snapshot within {timeout}s; last: {self.snapshots[-1:]}")
            self._new.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), remaining)

    async def failure(self, timeout: float = 5.0) -> BaseException:
        await asyncio.wait_for(asyncio.shield(self._task), timeout)
        assert self.error is not None
        return self.error

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@pytest.fixture
def consul() -> Iterator[ConsulDouble]:
    with ConsulDouble(other_datacenters=("dc2",)) as double:
        yield double


@pytest.fixture
async def watch(consul: ConsulDouble) -> AsyncIterator[Callable[..., Collector]]:
    collectors: list[Collector] = []

    def start(**kwargs: Any) -> Collector:
        kwargs.setdefault("wait", 30.0)
        c = Collector(ConsulProvider("127.0.0.1", consul.port, **kwargs))
        collectors.append(c)
        return c

    yield start
    for c in collectors:
        await c.close()


def ids(snap: Snapshot, service: str) -> list[str]:
    return [i.id for i in snap.get(service, ())]


async def blocked(consul: ConsulDouble, path: str, timeout: float = 5.0) -> None:
    """Wait until the double has received a blocking query for ``path``."""
    deadline = time.monotonic() + timeout
    while not any(r.path == path and "index" in r.query for r in consul.requests):
        assert time.monotonic() < deadline, f"no blocking query for {path}"
        await asyncio.sleep(0.01)


def has(service: str, instance_id: str) -> Callable[[Snapshot], bool]:
    return lambda s: instance_id in ids(s, service)


def count(service: str, n: int) -> Callable[[Snapshot], bool]:
    return lambda s: len(s.get(service, ())) == n


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


async def test_is_a_provider() -> None:
    assert isinstance(ConsulProvider(), Provider)


async def test_first_snapshot_lists_services_without_consul_itself(
    consul: ConsulDouble, watch: Callable[..., Collector]
) -> None:
    consul.register("web", "web-1", port=8001, tags=["v1", "blue"], meta={"health_path": "/hz", "zone": "a"})
    snap = await watch().until(lambda s: True)
    assert set(snap) == {"web"}
    [inst] = snap["web"]
    assert (inst.id, inst.host, inst.port, inst.source, inst.health_path) == (
        "web-1",
        "127.0.0.1",
        8001,
        "consul",
        "/hz",
    )
    assert inst.metadata == (("health_path", "/hz"), ("tags", "v1,blue"), ("zone", "a"))


async def test_instances_appear_within_one_blocking_round_trip(
    consul: ConsulDouble, watch: Callable[..., Collector]
) -> None:
    """Registration-to-snapshot latency over 20 trials, with a 30 s wait so a missed wake-up would show."""
    consul.register("web", "web-0", port=8000)
    c = watch(wait=30.0)
    await c.until(lambda s: ids(s, "web") == ["web-0"])
    existing, new_service = [], []
    for i in range(1, 21):
        await asyncio.sleep(0.2)  # no churn: the provider's token bucket refills between trials
        t0 = time.perf_counter()
        consul.register("web", f"web-{i}", port=8000 + i)
        await c.until(has("web", f"web-{i}"), timeout=2.0)
        existing.append(time.perf_counter() - t0)
    for i in range(5):
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        consul.register(f"new-{i}", f"new-{i}-a", port=9000 + i)
        await c.until(has(f"new-{i}", f"new-{i}-a"), timeout=2.0)
        new_service.append(time.perf_counter() - t0)
    print(
        f"\nconsul registration->snapshot, existing service (20 trials): "
        f"p50 {statistics.median(existing) * 1000:.1f} ms, p99 {p99(existing) * 1000:.1f} ms; "
        f"new service (5 trials): max {max(new_service) * 1000:.1f} ms"
    )
    assert p99(existing) < 1.0
    assert max(new_service) < 1.0


async def test_weight_change_reaches_the_snapshot(
    consul: ConsulDouble, watch: Callable[..., Collector]
) -> None:
    consul.register("web", "web-1", port=8001, weights={"Passing": 1, "Warning": 1})
    c = watch()
    await c.until(lambda s: ids(s, "web") == ["web-1"])
    consul.register("web", "web-1", port=8001, weights={"Passing": 7, "Warning": 1})
    snap = await c.until(lambda s: s["web"][0].weight == 7)
    assert [i.weight for i in snap["web"]] == [7]


async def test_critical_in_consul_drops_out_and_passing_brings_back(
    consul: ConsulDouble, watch: Callable[..., Collector]
) -> None:
    consul.register("web", "web-1", port=8001)
    check = consul.register("web", "web-2", port=8002)
    c = watch()
    await c.until(lambda s: ids(s, "web") == ["web-1", "web-2"])
    consul.set_check(check, "critical", output="connection refused")
    await c.until(lambda s: ids(s, "web") == ["web-1"])
    consul.set_check(check, "passing")
    await c.until(lambda s: ids(s, "web") == ["web-1", "web-2"])


async def test_node_failure_drops_every_instance_on_it(
    consul: ConsulDouble, watch: Callable[..., Collector]
) -> None:
    consul.add_node("node2", "10.0.0.2")
    consul.register("web", "web-1", port=8001)
    consul.register("web", "web-2", port=8002, node="node2")
    c = watch()
    await c.until(lambda s: ids(s, "web") == ["web-1", "web-2"])
    consul.set_node_health("node2", "critical")
    await c.until(lambda s: ids(s, "web") == ["web-1"])


async def test_warning_instances_excluded_by_default(
    consul: ConsulDouble, watch: Callable[..., Collector]
) -> None:
    consul.register("web", "web-1", port=8001)
    consul.register("web", "web-2", port=8002, status="warning")
    snap = await watch().until(lambda s: "web" in s)
    assert ids(snap, "web") == ["web-1"]
    assert all(r.query.get("passing") == "true" for r in consul.requests if r.path.startswith("/v1/health/"))


async def test_warning_instances_allowed_use_warning_weight(
    consul: ConsulDouble, watch: Callable[..., Collector]
) -> None:
    consul.register("web", "web-1", port=8001, weights={"Passing": 10, "Warning": 2})
    check = consul.register(
        "web", "web-2", port=8002, weights={"Passing": 10, "Warning": 2}, status="warning"
    )
    c = watch(allow_warning=True)
    snap = await c.until(lambda s: "web" in s)
    assert [(i.id, i.weight) for i in snap["web"]] == [("web-1", 10), ("web-2", 2)]
    consul.set_check(check, "critical")
    await c.until(lambda s: ids(s, "web") == ["web-1"])


async def test_instances_and_services_disappear(
    consul: ConsulDouble, watch: Callable[..., Collector]
) -> None:
    consul.register("web", "web-1", port=8001)
    consul.register("web", "web-2", port=8002)
    consul.register("api", "api-1", port=9001)
    c = watch()
    await c.until(lambda s: ids(s, "web") == ["web-1", "web-2"] and "api" in s)
    consul.deregister("web-2")
    await c.until(lambda s: ids(s, "web") == ["web-1"])
    consul.deregister("api-1")
    snap = await c.until(lambda s: "api" not in s)
    assert ids(snap, "web") == ["web-1"]


async def test_service_address_falls_back_to_node_address(
    consul: ConsulDouble, watch: Callable[..., Collector]
) -> None:
    consul.add_node("node2", "10.0.0.7")
    consul.register("web", "web-1", port=8001, node="node2")  # Service.Address ""
    consul.register("web", "web-2", port=8002, node="node2", address="10.0.0.99")
    snap = await watch().until(lambda s: "web" in s)
    assert [(i.id, i.host) for i in snap["web"]] == [("web-1", "10.0.0.7"), ("web-2", "10.0.0.99")]


async def test_datacenter_is_queried_with_dc(consul: ConsulDouble, watch: Callable[..., Collector]) -> None:
    consul.register("web", "web-local", port=8001)
    consul.register("web", "web-dc2", port=8002, dc="dc2")
    snap = await watch(datacenter="dc2").until(lambda s: "web" in s)
    assert ids(snap, "web") == ["web-dc2"]
    assert all(r.query.get("dc") == "dc2" for r in consul.requests)


async def test_unknown_datacenter_is_a_discovery_error(watch: Callable[..., Collector]) -> None:
    err = await watch(datacenter="dc9").failure()
    assert isinstance(err, DiscoveryError) and "No path to datacenter" in str(err)


async def test_token_is_sent_on_every_request() -> None:
    with ConsulDouble(acl_tokens={"s3cret": AclPolicy(service_read=True)}) as consul:
        consul.register("web", "web-1", port=8001)
        c = Collector(ConsulProvider("127.0.0.1", consul.port, token="s3cret", wait=30))
        try:
            await c.until(lambda s: ids(s, "web") == ["web-1"])
            consul.register("web", "web-2", port=8002)
            await c.until(lambda s: ids(s, "web") == ["web-1", "web-2"])
        finally:
            await c.close()
        assert consul.requests and all(r.token == "s3cret" for r in consul.requests)


async def test_token_without_read_permission_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with ConsulDouble(acl_tokens={"blind": AclPolicy(service_read=False)}) as consul:
        consul.register("web", "web-1", port=8001)
        with caplog.at_level(logging.WARNING, logger="msa_gateway.discovery.consul"):
            c = Collector(ConsulProvider("127.0.0.1", consul.port, token="blind"))
            try:
                assert await c.until(lambda s: True) == {}
            finally:
                await c.close()
    assert "ACLs hid part of /v1/catalog/services" in caplog.text


async def test_rejected_token_is_reported_as_403_without_leaking_it() -> None:
    with ConsulDouble(acl_tokens={"s3cret": AclPolicy()}) as consul:
        c = Collector(ConsulProvider("127.0.0.1", consul.port, token="wrong-token"))
        err = await c.failure()
    assert isinstance(err, DiscoveryError)
    assert "Consul ACL token rejected (403)" in str(err) and "ACL not found" in str(err)
    assert "wrong-token" not in str(err)


async def test_index_going_backwards_resets_the_blocking_loop(
    consul: ConsulDouble, watch: Callable[..., Collector]
) -> None:
    """After a snapshot restore the index drops; a client keeping the old index would block the whole wait."""
    for i in range(5):
        consul.register("web", f"web-{i}", port=8000 + i)
    c = watch(wait=5.0)
    await c.until(lambda s: len(s.get("web", ())) == 5)
    await blocked(consul, "/v1/health/service/web")
    high = consul.index()
    restored_at = time.time()
    consul.restore_snapshot(index=3)
    await asyncio.sleep(0.2)
    consul.register("web", "web-new", port=8100)
    t0 = time.perf_counter()
    await c.until(lambda s: "web-new" in ids(s, "web"), timeout=2.0)  # well under wait=5s
    assert time.perf_counter() - t0 < 2.0
    after = [r for r in consul.requests if r.path == "/v1/health/service/web" and r.at >= restored_at]
    assert any("index" not in r.query for r in after), "no non-blocking re-read after the reset"
    assert all(int(r.query.get("index", 0)) < high for r in after[1:])


async def test_zero_index_never_turns_into_a_busy_loop(
    consul: ConsulDouble, watch: Callable[..., Collector]
) -> None:
    """With the zero-index bug a query blocks out its wait and answers 0; the client must then block on 1."""
    consul.register("web", "web-1", port=8001)
    consul.register("web", "web-1", port=8001)
    c = watch(wait=1.0)
    await c.until(lambda s: "web" in s)
    consul.report_zero_index(True)
    consul.register("web", "web-2", port=8002)  # seen once the current blocking query runs out
    await c.until(lambda s: ids(s, "web") == ["web-1", "web-2"], timeout=5.0)
    t0 = time.time()
    await asyncio.sleep(2.0)
    window = [r for r in consul.requests if r.path == "/v1/health/service/web" and r.at >= t0]
    assert window and all(r.query.get("index") == "1" for r in window[1:])
    assert len(window) <= 3, f"{len(window)} requests in 2 s with wait=1s: busy loop"


async def test_timed_out_blocking_queries_yield_nothing_new(
    consul: ConsulDouble, watch: Callable[..., Collector]
) -> None:
    consul.register("web", "web-1", port=8001)
    c = watch(wait=0.3)
    await c.until(lambda s: "web" in s)
    await asyncio.sleep(1.5)
    polls = [r for r in consul.requests if r.path == "/v1/health/service/web" and "index" in r.query]
    assert len(polls) >= 3  # several blocking queries ran out their wait ...
    assert len(c.snapshots) == 1  # ... and none produced a duplicate snapshot
    assert c.error is None


async def test_consul_down_mid_watch_raises_and_a_new_watch_recovers(
    consul: ConsulDouble, watch: Callable[..., Collector]
) -> None:
    consul.register("web", "web-1", port=8001)
    c = watch()
    before = await c.until(lambda s: "web" in s)
    t0 = time.perf_counter()
    consul.go_down()
    err = await c.failure(timeout=5.0)
    assert isinstance(err, DiscoveryError) and "unreachable" in str(err)
    print(f"\nconsul down -> DiscoveryError in {(time.perf_counter() - t0) * 1000:.0f} ms")
    refused = await watch().failure()
    assert isinstance(refused, DiscoveryError)
    consul.come_back()
    again = await watch().until(lambda s: "web" in s)
    assert again == before


async def test_stalled_consul_hits_the_read_timeout(
    consul: ConsulDouble, watch: Callable[..., Collector]
) -> None:
    consul.register("web", "web-1", port=8001)
    c = watch(wait=0.5, read_timeout_margin=0.3)
    await c.until(lambda s: "web" in s)
    consul.stall()
    t0 = time.perf_counter()
    err = await c.failure(timeout=5.0)
    elapsed = time.perf_counter() - t0
    assert isinstance(err, DiscoveryError)
    assert 0.5 <= elapsed < 3.0, elapsed  # not before wait, and not forever


async def test_bad_entries_are_skipped_and_logged(
    consul: ConsulDouble, watch: Callable[..., Collector], caplog: pytest.LogCaptureFixture
) -> None:
    consul.register("web", "web-ok", port=8001)
    consul.register("web", "web-noport", port=0)
    consul.register("web", "web-bigport", port=70000)
    consul.register("health", "reserved-1", port=8003)  # a gateway endpoint name cannot be a service
    with caplog.at_level(logging.WARNING, logger="msa_gateway.discovery.consul"):
        c = watch()
        snap = await c.until(lambda s: "web" in s)
        assert ids(snap, "web") == ["web-ok"] and "health" not in snap
        consul.register("web", "web-2", port=8002)  # the provider keeps going
        await c.until(lambda s: ids(s, "web") == ["web-2", "web-ok"])
    text = caplog.text
    assert "'web-noport' of service 'web': missing port" in text
    assert "'web-bigport' of service 'web': port 70000 out of range" in text
    assert "skipping service 'health'" in text


async def test_50_services_of_20_instances(consul: ConsulDouble, watch: Callable[..., Collector]) -> None:
    """Initial load and one-change rebuild with 1000 instances; both figures are printed."""
    for s in range(50):
        for i in range(20):
            consul.register(
                f"svc-{s:02d}", f"svc-{s:02d}-{i:02d}", port=10000 + i, tags=["t"], meta={"k": "v"}
            )
    t0 = time.perf_counter()
    c = watch()
    await c.until(lambda s: sum(len(v) for v in s.values()) == 1000, timeout=10.0)
    initial = time.perf_counter() - t0
    changes = []
    for trial in range(10):
        await asyncio.sleep(0.05)
        check = f"service:svc-{trial:02d}-00"
        t1 = time.perf_counter()
        consul.set_check(check, "critical")
        await c.until(count(f"svc-{trial:02d}", 19))
        changes.append(time.perf_counter() - t1)
    print(
        f"\nconsul 50x20: initial load {initial * 1000:.1f} ms (51 HTTP requests); change->snapshot "
        f"p50 {statistics.median(changes) * 1000:.1f} ms, max {max(changes) * 1000:.1f} ms"
    )
    # tens of ms on a quiet machine (printed); the bounds only catch a blow-up, the bench measures
    assert statistics.median(changes) < 1.0
    assert initial < 5.0
