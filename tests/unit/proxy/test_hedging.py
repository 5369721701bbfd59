"""Request hedging through the whole handler, on the fake upstream (no sockets).

Round robin picks the first instance (A) first; with two instances B is the hedge.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from msa_gateway.errors import UpstreamError
from msa_gateway.proxy.handler import ProxyApp
from msa_gateway.runtime import Runtime
from tests.support.fake_upstream import FakeUpstream, Hang, Reply, access_lines, call, instances, make_runtime

A, B, C = "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"
REFUSED = UpstreamError("refused", "connect_refused", request_sent=False)


def metric(rt: Runtime, name: str, **labels: str) -> float:
    value = rt.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


def hedged(
    delay: Any = 0.02, ports: tuple[int, ...] = (9001, 9002), **options: Any
) -> tuple[Runtime, FakeUpstream, Any]:
    rt, up, log = make_runtime({"svc": {"hedging": {"delay": delay}, **options}})
    rt.apply(instances(*ports))
    return rt, up, log


def assert_all_released(rt: Runtime) -> None:
    guard = rt.guards["svc"]
    assert guard.budget.retries_active == 0 and guard.budget.requests_active == 0
    assert all(guard.limits.in_flight(k) == 0 for k in rt.snapshot.services["svc"].keys)
    assert all(guard.waits.waiting(k) == 0 for k in rt.snapshot.services["svc"].keys)


async def test_a_hedge_answers_when_the_first_instance_hangs_and_the_loser_is_cancelled() -> None:
    rt, up, log = hedged()
    up.script(A, Hang())
    up.script(B, Reply(200, chunks=[b"from B"]))
    answer = await call(ProxyApp(rt), "GET", "/svc/x")
    assert (answer.status, answer.body) == (200, b"from B")
    assert [c.address for c in up.calls] == [A, B]
    assert up.cancelled == [A]  # the loser was cancelled (the native client discards its connection)
    assert metric(rt, "gateway_hedges_total", service="svc", result="sent") == 1
    assert metric(rt, "gateway_hedge_wins_total", service="svc") == 1
    assert access_lines(log)[0]["instance"] == B
    assert_all_released(rt)


async def test_an_answer_before_the_delay_sends_no_hedge() -> None:
    rt, up, _ = hedged(delay=5.0)
    answer = await call(ProxyApp(rt), "GET", "/svc/x")
    assert answer.status == 200 and [c.address for c in up.calls] == [A]
    assert metric(rt, "gateway_hedges_total", service="svc", result="sent") == 0


async def test_the_first_attempt_may_still_win_and_the_hedge_is_cancelled() -> None:
    rt, up, _ = hedged()
    slow, hedge = Hang(then=Reply(200, chunks=[b"from A"])), Hang()
    up.script(A, slow)
    up.script(B, hedge)
    task = asyncio.create_task(call(ProxyApp(rt), "GET", "/svc/x"))
    await asyncio.wait_for(hedge.entered.wait(), 2)
    slow.release.set()
    answer = await asyncio.wait_for(task, 2)
    assert answer.body == b"from A"
    assert up.cancelled == [B]
    assert metric(rt, "gateway_hedge_wins_total", service="svc") == 0
    assert_all_released(rt)


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_non_idempotent_methods_are_never_hedged(method: str) -> None:
    rt, up, _ = hedged(delay=0.01)
    slow, hedge = Hang(), Hang()
    up.script(A, slow)
    up.script(B, hedge)
    task = asyncio.create_task(call(ProxyApp(rt), method, "/svc/x", body=[b"{}"]))
    await asyncio.wait_for(slow.entered.wait(), 2)
    with pytest.raises(TimeoutError):  # 20 x the delay: a hedge would have gone by now
        await asyncio.wait_for(hedge.entered.wait(), 0.2)
    slow.release.set()
    assert (await asyncio.wait_for(task, 2)).status == 200
    assert [c.address for c in up.calls] == [A]
    assert metric(rt, "gateway_hedges_total", service="svc", result="sent") == 0


async def test_a_streamed_body_is_never_hedged() -> None:
    rt, up, _ = hedged(delay=0.01, retry={"max_retries": 0})  # nothing keeps a large body for a replay
    slow, hedge = Hang(), Hang()
    up.script(A, slow)
    up.script(B, hedge)
    body = [b"x" * 40_000, b"y" * 40_000]
    task = asyncio.create_task(call(ProxyApp(rt), "PUT", "/svc/x", body=body))
    await asyncio.wait_for(slow.entered.wait(), 2)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(hedge.entered.wait(), 0.2)
    slow.release.set()
    assert (await asyncio.wait_for(task, 2)).status == 200
    assert [c.address for c in up.calls] == [A] and up.calls[0].body == b"".join(body)


async def test_a_buffered_put_body_goes_to_the_hedge_whole() -> None:
    rt, up, _ = hedged()
    up.script(A, Hang())
    answer = await call(ProxyApp(rt), "PUT", "/svc/x", body=[b"same ", b"bytes"])
    assert answer.status == 200
    assert [(c.address, c.body) for c in up.calls] == [(A, b"same bytes"), (B, b"same bytes")]


async def test_hedges_are_bounded_by_the_retry_budget() -> None:
    rt, up, _ = hedged(retry={"budget_percent": 0, "min_retry_concurrency": 0})
    slow = Hang(then=Reply(200, chunks=[b"from A"]))
    up.script(A, slow)
    task = asyncio.create_task(call(ProxyApp(rt), "GET", "/svc/x"))
    await asyncio.wait_for(slow.entered.wait(), 2)
    deadline = asyncio.get_running_loop().time() + 2
    while metric(rt, "gateway_hedges_total", service="svc", result="budget_exhausted") == 0:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.005)
    slow.release.set()
    assert (await asyncio.wait_for(task, 2)).body == b"from A"
    assert [c.address for c in up.calls] == [A]
    assert_all_released(rt)


async def test_max_hedges_bounds_the_racers() -> None:
    rt, up, _ = hedged(delay=0.01, ports=(9001, 9002, 9003))
    hangs = {address: Hang() for address in (A, B, C)}
    for address, hang in hangs.items():
        up.script(address, hang)
    task = asyncio.create_task(call(ProxyApp(rt), "GET", "/svc/x"))
    waiters = [asyncio.ensure_future(hangs[x].entered.wait()) for x in (B, C)]
    done, pending = await asyncio.wait(waiters, timeout=2, return_when=asyncio.FIRST_COMPLETED)
    for waiter in pending:
        waiter.cancel()
    assert done
    with pytest.raises(TimeoutError):  # max_hedges 1: the third instance never gets the request
        await asyncio.wait_for(asyncio.gather(*(h.entered.wait() for h in hangs.values())), 0.15)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(up.calls) == 2 and sorted(up.cancelled) == sorted(c.address for c in up.calls)
    assert_all_released(rt)


async def test_a_hedge_that_fails_leaves_the_first_attempt_racing() -> None:
    rt, up, _ = hedged()
    slow = Hang(then=Reply(200, chunks=[b"from A"]))
    up.script(A, slow)
    up.script(B, UpstreamError("reset", "reset", request_sent=True))
    task = asyncio.create_task(call(ProxyApp(rt), "GET", "/svc/x"))
    deadline = asyncio.get_running_loop().time() + 2
    while len(up.calls) < 2:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.005)
    slow.release.set()
    answer = await asyncio.wait_for(task, 2)
    assert answer.body == b"from A"
    assert rt.guards["svc"].outlier.snapshot(0)["svc/i9002@127.0.0.1:9002"].consecutive_failures == 1
    assert_all_released(rt)


async def test_no_other_instance_means_no_hedge() -> None:
    rt, up, _ = make_runtime({"svc": {"hedging": {"delay": 0.01}}})
    rt.apply(instances(9001))
    slow = Hang()
    up.script(A, slow)
    task = asyncio.create_task(call(ProxyApp(rt), "GET", "/svc/x"))
    deadline = asyncio.get_running_loop().time() + 2
    while metric(rt, "gateway_hedges_total", service="svc", result="no_other_instance") == 0:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.005)
    slow.release.set()
    assert (await asyncio.wait_for(task, 2)).status == 200
    assert_all_released(rt)


async def test_a_percentile_delay_hedges_only_once_the_service_has_samples() -> None:
    rt, up, _ = hedged(delay="p95")
    slow = Hang()
    up.script(A, slow)
    task = asyncio.create_task(call(ProxyApp(rt), "GET", "/svc/x"))
    await asyncio.wait_for(slow.entered.wait(), 2)
    with pytest.raises(TimeoutError):  # no recent latency known: no hedge
        await asyncio.wait_for(asyncio.shield(task), 0.1)
    slow.release.set()
    await task
    assert metric(rt, "gateway_hedges_total", service="svc", result="sent") == 0

    rt, up, _ = hedged(delay="p95")
    for _ in range(30):
        rt.guards["svc"].latency.add(0.001)  # p95 of 1 ms: the hedge goes after min_delay (5 ms)
    up.script(A, Hang())
    answer = await asyncio.wait_for(call(ProxyApp(rt), "GET", "/svc/x"), 2)
    assert answer.status == 200 and [c.address for c in up.calls] == [A, B]
    assert metric(rt, "gateway_hedges_total", service="svc", result="sent") == 1


def test_hedging_config_errors_name_the_key() -> None:
    from msa_gateway.errors import ConfigError
    from msa_gateway.settings import parse_config

    for block, key in [
        ({"delay": "p100"}, "services.svc.hedging.delay"),
        ({"delay": 0}, "services.svc.hedging.delay"),
        ({"max_hedges": 1}, "services.svc.hedging.delay"),
        ({"delay": 0.1, "max_hedges": 9}, "services.svc.hedging.max_hedges"),
        ({"delay": 0.1, "extra": 1}, "services.svc.hedging.extra"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_config({"services": {"svc": {"hedging": block}}}, "gw.yaml")
        assert str(info.value).startswith(f"gw.yaml: {key}:"), str(info.value)
    config = parse_config({"services": {"svc": {"hedging": {"delay": "p99.5", "max_hedges": 2}}}}, "gw.yaml")
    hedging = config.services["svc"].options.hedging
    assert hedging is not None and (hedging.percentile, hedging.delay, hedging.max_hedges) == (99.5, None, 2)
