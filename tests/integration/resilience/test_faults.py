"""Issue 4's fault-injection numbers, shortened: real backends and a real gateway process.

The scenarios live in ``bench/`` (``python -m bench.faults`` runs them at full length and
prints the tables); these tests run them for a few seconds at a lower rate and assert the same
promises. The first tests check that the judging itself catches each kind of broken promise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

import aiohttp
import pytest
from bench.crash import CrashReport, format_crash, run_crash
from bench.drain import format_drain, run_drain
from bench.faultkit import SERVICE, gateway_config, log_records, operator_options, wait_serving
from bench.hang import HangReport, format_hang, run_hang
from bench.openloop import Shot

from msa_gateway.observability.logging import iso_now
from tests.support.backend import running_backends
from tests.support.gateway import gateway_process

RATE = 50.0  # GET/s (and POST/s): enough for several requests to each instance per 100 ms
DURATION, FAULT_AT, FAULT_ENDS = 7.0, 2.0, 4.0


def _shot(stream: str, rid: str, status: int | None, *, sent: float = 0.0, instance: str = "b") -> Shot:
    return Shot(stream, rid, 0.0, sent, sent + 0.001, 0.0, 0.001, status, instance, None)


def _crash(
    shots: list[Shot], delivered: Mapping[str, int], window: tuple[float, float] = (100.0, 100.001)
) -> CrashReport:
    return CrashReport.build(
        rate=1,
        duration=3,
        kill_at=1,
        restart_at=2,
        options=operator_options(),
        shots=shots,
        delivered=delivered,
        blind_window=window,
    )


def test_crash_judging_flags_each_broken_promise() -> None:
    good = _crash(
        [_shot("GET", "g1", 200), _shot("POST", "p1", 200), _shot("POST", "p2", 502)],
        {"g1": 2, "p1": 1},
    )
    assert all(ok for _, ok in good.checks()), good.checks()
    assert good.gets_delivered_twice == 1
    assert good.failed_posts_never_delivered == 1
    bad = _crash(
        [
            _shot("GET", "g1", 502),
            _shot("POST", "twice", 200),
            _shot("POST", "delivered", 502),
            _shot("POST", "wrong-status", 500),
        ],
        {"twice": 2, "delivered": 1, "wrong-status": 1},
    )
    assert [ok for _, ok in bad.checks()] == [False, False, False, False]
    assert bad.posts_delivered_twice == ["twice"]
    assert bad.failed_posts_delivered == ["delivered", "wrong-status"]
    assert bad.failed_posts_bad_status == ["wrong-status"]


def test_crash_judging_sets_apart_failed_posts_in_the_blind_window() -> None:
    report = _crash(
        [_shot("POST", "in", 502, sent=10.0), _shot("POST", "out", 502, sent=20.0)],
        {},
        window=(10.0005, 10.002),
    )
    assert report.failed_posts_unknowable == ["in"]
    assert report.failed_posts_never_delivered == 1
    assert all(ok for _, ok in report.checks())


def test_hang_judging_flags_traffic_after_the_ejection_and_no_ejection() -> None:
    hang_wall = time.time()
    shots = [_shot("GET", f"g{i}", 200, sent=hang_wall + i * 0.5, instance="b") for i in range(4)]
    ejected_at = iso_now(hang_wall + 1.0)

    def build(hung: list[str], ejection: dict[str, object] | None) -> HangReport:
        return HangReport.build(
            rate=1,
            duration=3,
            hang_at=1,
            restore_at=2,
            read_timeout=1.0,
            options=operator_options(read_timeout=1.0, retry_on_timeout=True),
            shots=shots,
            hung_ids=hung,
            hang_wall=hang_wall,
            ejection=ejection,
        )

    record = {"timestamp": ejected_at, "consecutive_failures": 5}
    fine = build(["g0", "g1"], record)
    assert fine.hung_after_ejection == [] and fine.hung_received == 2
    assert all(ok for _, ok in fine.checks()), fine.checks()
    leaked = build(["g0", "g3"], record)
    assert leaked.hung_after_ejection == ["g3"]
    assert not leaked.checks()[3][1]
    never = build(["g0"], None)
    assert not never.checks()[2][1] and not never.checks()[3][1]


@pytest.mark.parametrize("client", ["native", "aiohttp"])
async def test_instance_crash_fails_no_get_and_delivers_no_post_twice(client: str) -> None:
    # The kill resets every GET in flight on ``a`` at once; on a starved CI machine that can be more
    # than the default retry budget's floor of 3 concurrent retries (the budget is tested on its
    # own). Here the budget is no limit, so what is tested is the crash: resets retried, POSTs not.
    options = {**operator_options(), "retry": {"min_retry_concurrency": 64}}
    report = await run_crash(RATE, DURATION, FAULT_AT, FAULT_ENDS, options=options, client=client)
    text = format_crash(report)
    for description, ok in report.checks():
        assert ok, f"{description}\n{text}"
    assert report.posts_sent == RATE * DURATION
    assert report.retries > 0, f"the kill hit no request, so nothing was tested\n{text}"
    for method in ("GET", "POST"):
        before = [s for s in report.shots if s.stream == method and s.due < FAULT_AT and s.instance == "a"]
        assert len(before) > RATE * FAULT_AT / 4, f"few {method}s went to the instance killed\n{text}"
    back = [s for s in report.shots if s.due >= FAULT_ENDS and s.instance == "a"]
    assert back, f"the restarted instance got no traffic\n{text}"


async def test_hung_instance_is_timed_out_retried_and_ejected() -> None:
    report = await run_hang(RATE, DURATION, FAULT_AT, FAULT_ENDS, read_timeout=1.0)
    text = format_hang(report)
    for description, ok in report.checks():
        assert ok, f"{description}\n{text}"
    assert report.hung_received >= 5, f"too few requests reached the hung instance\n{text}"
    assert report.ejection_failures == 5
    # Its probes never failed, so it stays ejected for the 30 s base time after it answers again.
    assert not [s for s in report.shots if s.due >= FAULT_ENDS and s.instance == "a"], text


async def test_sigterm_lets_a_stream_finish_refuses_new_connections_and_exits_0() -> None:
    report = await run_drain(n=8, interval=0.25, term_at=0.5, drain_timeout=10.0)
    text = format_drain(report)
    for description, ok in report.checks():
        assert ok, f"{description}\n{text}"
    assert report.exit_after_term is not None
    assert report.exit_after_term >= report.stream_end_after_term, text


async def test_drain_limit_closes_a_longer_stream_and_still_exits_0() -> None:
    limit = 1.0
    report = await run_drain(n=20, interval=0.25, term_at=0.5, drain_timeout=limit)
    text = format_drain(report)
    assert not report.stream_complete and report.events < report.expected_events, text
    assert limit <= report.stream_end_after_term <= limit + 1.0, text
    assert report.exit_code == 0, text
    assert report.exit_after_term is not None and report.exit_after_term < limit + 3.0, text


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``condition`` (a blocking call, run in a thread) until it holds."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("in_flight_on_a", "after_kill", "min_retry_concurrency"),
    [(3, 2, None), (4, 0, 4)],
    ids=["refused-after", "4-reset-budget-4"],
)
async def test_every_get_survives_a_kill_while_retries_are_running(
    in_flight_on_a: int, after_kill: int, min_retry_concurrency: int | None
) -> None:
    """Slow backends keep GETs in flight; the kill resets those on ``a`` and they retry on ``b``.

    ``refused-after``: 3 GETs reset, retried on ``b`` (each holds a budget slot for 2 s); then two
    more GETs, one of which round robin sends to the dead ``a``: refused, never delivered, and
    retried without charging the budget (a retry of an attempt that reached nobody adds no load).
    ``4-reset-budget-4``: 4 GETs reset at once need 4 concurrent retries; the budget allows
    max(3, 20% of requests in flight) by default (Envoy's), so the operator raises
    ``min_retry_concurrency`` to the number of requests one instance may hold when it dies.
    """
    options = operator_options()
    if min_retry_concurrency is not None:
        options["retry"] = {"min_retry_concurrency": min_retry_concurrency}
    with running_backends("a", "b") as (a, b), gateway_process(gateway_config([a, b], options)) as gw:
        await wait_serving(gw, healthy=2)
        for backend in (a, b):
            backend.control(mode="slow", delay=2.0)
        async with aiohttp.ClientSession() as session:

            async def get(rid: str) -> int:
                url = f"{gw.url}/{SERVICE}/items"
                async with session.get(url, headers={"X-Request-ID": rid}) as resp:
                    await resp.read()
                    return resp.status

            first = [
                asyncio.create_task(get(f"first-{i}"), name=f"get-first-{i}")
                for i in range(2 * in_flight_on_a)
            ]
            await _until(lambda: a.total() == in_flight_on_a and b.total() == in_flight_on_a)
            a.kill()
            # The reset GETs are retried on b.
            await _until(lambda: b.total() >= in_flight_on_a + min(in_flight_on_a, 3))
            later = [asyncio.create_task(get(f"later-{i}"), name=f"get-later-{i}") for i in range(after_kill)]
            statuses = await asyncio.gather(*first, *later)
        failed = [
            r for r in log_records(gw.output()) if r.get("event") == "request" and r.get("status") != 200
        ]
    assert statuses == [200] * len(statuses), f"{statuses}: {failed}"
