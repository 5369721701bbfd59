"""Latency as a health signal: the window's percentiles and the slow-instance rule (pure logic)."""

from __future__ import annotations

import asyncio

import pytest

from msa_gateway.health.latency import MIN_SAMPLES, LatencyWindow, Wait, WaitTracker
from msa_gateway.model import OutlierConfig
from msa_gateway.proxy.handler import ProxyApp
from tests.support.fake_upstream import Hang, call, instances, make_runtime

ON = OutlierConfig(latency_multiple=5, latency_min=0.1)


def window(*samples: float) -> LatencyWindow:
    w = LatencyWindow(size=100)
    for s in samples:
        w.add(s)
    return w


def test_no_percentile_before_enough_samples() -> None:
    assert window(*[0.01] * (MIN_SAMPLES - 1)).percentile(99, 0.0) is None
    assert window(*[0.01] * MIN_SAMPLES).percentile(99, 0.0) == 0.01


def test_percentiles_follow_the_recent_samples_only() -> None:
    w = window(*[i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert w.percentile(50, 0.0) == 0.05 and w.percentile(99, 0.0) == 0.099
    for _ in range(100):  # the window slides: only the last 100 count
        w.add(0.5)
    assert w.percentile(50, 10.0) == 0.5


def test_the_threshold_is_a_multiple_of_p99_with_a_floor() -> None:
    t = WaitTracker(ON)
    assert t.threshold(None) == 0.1 and t.threshold(0.001) == 0.1 and t.threshold(0.1) == 0.5


def test_an_instance_waited_on_longer_than_the_threshold_is_slow_until_it_answers() -> None:
    t, lat = WaitTracker(ON), LatencyWindow()
    t.started("a", 0.0)
    t.started("b", 0.0)
    t.ended("b", 0.01, Wait.ANSWERED)
    assert t.slow_keys(0.05, lat) == (frozenset(), frozenset())
    t.started("a", 0.08)  # a newer request does not make the old wait younger
    slow, new = t.slow_keys(0.15, lat)
    assert slow == new == frozenset({"a"}) and t.slow_total == 1
    assert t.slow_keys(0.16, lat) == (frozenset({"a"}), frozenset())  # cached, not new again
    t.ended("a", 0.2, Wait.ANSWERED)  # one head: alive; the other wait starts afresh
    assert t.slow_keys(0.21, lat)[0] == frozenset()
    assert t.waiting("a") == 1


def test_a_silent_idle_instance_is_held_out_then_gets_one_probe() -> None:
    t, lat = WaitTracker(ON), LatencyWindow()
    t.started("a", 0.0)
    assert t.slow_keys(0.2, lat)[0] == {"a"}
    t.ended("a", 0.3, Wait.SILENT)  # timed out (or lost a hedge it started first)
    assert t.slow_keys(0.35, lat)[0] == {"a"}  # idle, but held out for the threshold
    assert t.slow_keys(0.41, lat)[0] == frozenset()  # the hold passed: one probe may go
    t.started("a", 0.42)
    assert t.slow_keys(0.5, lat)[0] == {"a"}  # still owes the answer since 0.0
    t.ended("a", 0.6, Wait.SILENT)
    assert t.slow_keys(0.75, lat)[0] == {"a"}  # the hold doubled (0.2 s)
    assert t.slow_keys(0.81, lat)[0] == frozenset()


def test_a_dropped_wait_is_no_evidence() -> None:
    t, lat = WaitTracker(ON), LatencyWindow()
    t.started("a", 0.0)
    t.ended("a", 0.05, Wait.DROPPED)  # a hedge that lost, or the client left
    t.started("a", 1.0)
    assert t.slow_keys(1.05, lat)[0] == frozenset()


def test_disabled_by_default() -> None:
    t = WaitTracker(OutlierConfig())
    t.started("a", 0.0)
    assert not t.enabled and t.slow_keys(100.0, LatencyWindow()) == (frozenset(), frozenset())


async def test_a_hung_instance_gets_no_new_requests_until_it_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rt, up, _ = make_runtime(
        {"svc": {"outlier": {"latency_multiple": 5, "latency_min": 0.05}, "timeouts": {"read": 30}}}
    )
    rt.apply(instances(9001, 9002))
    hung = Hang()
    up.script("127.0.0.1:9001", hung)
    app = ProxyApp(rt)
    stuck = asyncio.create_task(call(app, "GET", "/svc/x"))  # round robin: A first
    await asyncio.wait_for(hung.entered.wait(), 2)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2
    pending = []
    while rt.metrics.registry.get_sample_value("gateway_slow_ejections_total", {"service": "svc"}) != 1:
        assert loop.time() < deadline, "the hung instance was never taken out of rotation"
        pending.append(asyncio.create_task(call(app, "GET", "/svc/x")))
        await asyncio.sleep(0.01)
    before = len(up.calls)
    answers = [await call(app, "GET", "/svc/x") for _ in range(10)]
    assert all(a.status == 200 for a in answers)
    assert {c.address for c in up.calls[before:]} == {"127.0.0.1:9002"}
    assert any("taken out of rotation" in r.getMessage() for r in caplog.records)
    state = rt.guards["svc"].describe()["outlier"]
    assert state["slow"] == ["svc/i9001@127.0.0.1:9001"] and state["slow_total"] == 1
    hung.release.set()  # it answers: back in rotation
    await asyncio.wait_for(asyncio.gather(stuck, *pending), 2)
    before = len(up.calls)
    for _ in range(4):
        await call(app, "GET", "/svc/x")
    assert "127.0.0.1:9001" in {c.address for c in up.calls[before:]}
