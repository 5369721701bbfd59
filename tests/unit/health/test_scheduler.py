"""The probe scheduler with a fake probe (no sockets): lag, concurrency, the CPU budget, crashes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator

import pytest

from msa_gateway.health.active import ProbeTarget
from msa_gateway.health.lag import LoopLag
from msa_gateway.health.probe import ProbeResult
from msa_gateway.health.scheduler import ProbeScheduler
from msa_gateway.model import HealthCheck, Instance, ProbeLimits

OK = ProbeResult(True, 200, 1.0)
TIMEOUT = ProbeResult(False, None, 1000.0, "timeout")


def targets(n: int, interval: float = 0.05, timeout: float = 1.0) -> dict[str, ProbeTarget]:
    check = HealthCheck(interval=interval, timeout=timeout)
    out = {}
    for i in range(n):
        inst = Instance(f"i{i}", "127.0.0.1", 9000 + i)
        out[f"svc/i{i}"] = ProbeTarget("svc", f"svc/i{i}", inst, "/health", check)
    return out


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


class Recorder:
    def __init__(self) -> None:
        self.results: list[tuple[str, ProbeResult]] = []

    def __call__(self, target: ProbeTarget, result: ProbeResult) -> None:
        self.results.append((target.key, result))


@pytest.fixture
def recorded() -> Recorder:
    return Recorder()


async def running(scheduler: ProbeScheduler) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(scheduler.run())


async def stop(task: asyncio.Task[None], scheduler: ProbeScheduler) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await scheduler.aclose()


async def test_a_timeout_while_the_gateway_lagged_is_not_recorded_and_is_probed_again(
    recorded: Recorder,
) -> None:
    lag = LoopLag()
    calls = 0

    async def probe(target: ProbeTarget) -> ProbeResult:
        nonlocal calls
        calls += 1
        if calls == 1:
            lag.note(time.monotonic(), 0.6)  # the loop ran 0.6 s late during this probe (timeout 1 s)
            return TIMEOUT
        return OK

    scheduler = ProbeScheduler(ProbeLimits(lag_fraction=0.25), probe, recorded, lag)
    scheduler.set_targets(targets(1, interval=30.0))
    task = await running(scheduler)
    await until(lambda: len(recorded.results) == 1)
    await stop(task, scheduler)
    assert recorded.results == [("svc/i0", OK)]  # the re-probe, well before the next 30 s slot
    assert scheduler.results == {"inconclusive": 1, "ok": 1}


async def test_a_timeout_without_lag_counts_against_the_instance(recorded: Recorder) -> None:
    lag = LoopLag()

    async def probe(target: ProbeTarget) -> ProbeResult:
        lag.note(time.monotonic(), 0.1)  # a little lag: under 25% of the 1 s timeout
        return TIMEOUT

    scheduler = ProbeScheduler(ProbeLimits(), probe, recorded, lag)
    scheduler.set_targets(targets(1))
    task = await running(scheduler)
    await until(lambda: len(recorded.results) >= 2)
    await stop(task, scheduler)
    assert {r.error for _, r in recorded.results} == {"timeout"}
    assert scheduler.results["inconclusive"] == 0


async def test_the_probe_own_timer_lateness_also_counts_as_lag(recorded: Recorder) -> None:
    async def probe(target: ProbeTarget) -> ProbeResult:
        return ProbeResult(False, None, 1500.0, "timeout", lag=0.5)

    scheduler = ProbeScheduler(ProbeLimits(), probe, recorded, LoopLag())
    scheduler.set_targets(targets(1, interval=30.0))
    task = await running(scheduler)
    await until(lambda: scheduler.results["inconclusive"] >= 2)  # first probe, then its re-probe
    await stop(task, scheduler)
    assert recorded.results == []


async def test_no_more_probes_than_the_concurrency_limit_are_out_at_once(recorded: Recorder) -> None:
    release = asyncio.Event()
    peak = 0

    async def probe(target: ProbeTarget) -> ProbeResult:
        nonlocal peak
        peak = max(peak, scheduler.in_flight)
        await release.wait()
        return OK

    scheduler = ProbeScheduler(ProbeLimits(concurrency=3), probe, recorded)
    scheduler.set_targets(targets(10))
    task = await running(scheduler)
    await until(lambda: scheduler.in_flight == 3)
    await asyncio.sleep(0.2)  # four intervals: the waiting seven stay waiting
    assert scheduler.in_flight == 3
    release.set()
    await until(lambda: len({k for k, _ in recorded.results}) == 10)
    await stop(task, scheduler)
    assert peak <= 3
    assert scheduler.schedule.skipped > 0  # slots that came while an instance still waited


@pytest.fixture
def health_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="msa_gateway.health"):
        yield caplog


async def test_over_the_cpu_budget_every_interval_stretches_and_it_is_said_once(
    recorded: Recorder, health_logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("msa_gateway.health.scheduler.BUDGET_EVERY", 0.05)
    cost = 0.005  # measured steps: 10 ms with the loop's share; 400 probes/s asked = 4 cores

    async def probe(target: ProbeTarget) -> ProbeResult:
        return ProbeResult(True, 200, 1.0, cpu=cost)

    scheduler = ProbeScheduler(ProbeLimits(cpu_budget=0.5), probe, recorded)
    scheduler.set_targets(targets(20))  # every 0.05 s: 400 probes/s
    task = await running(scheduler)
    await until(lambda: scheduler.effective_stretch > 1.0)
    assert scheduler.effective_stretch == pytest.approx(400 * 0.01 / 0.5 * 1.1, rel=0.1)
    cost = 0.00001
    await until(lambda: scheduler.effective_stretch == 1.0, timeout=10.0)
    await stop(task, scheduler)
    messages = [r.getMessage() for r in health_logs.records]
    assert messages.count("health probes slowed down to spare the gateway") == 1
    assert messages.count("health probes back at their configured intervals") == 1


async def test_a_recording_error_crashes_the_task_and_probing_goes_on_after_a_restart() -> None:
    seen: list[str] = []

    def record(target: ProbeTarget, result: ProbeResult) -> None:
        seen.append(target.key)
        if len(seen) == 1:
            raise RuntimeError("boom")

    async def probe(target: ProbeTarget) -> ProbeResult:
        return OK

    scheduler = ProbeScheduler(ProbeLimits(), probe, record)
    scheduler.set_targets(targets(1))
    with pytest.raises(RuntimeError, match="boom"):
        await scheduler.run()
    task = await running(scheduler)
    await until(lambda: len(seen) >= 3)
    await stop(task, scheduler)


async def test_removed_targets_are_not_recorded_and_unchanged_ones_keep_their_slot(
    recorded: Recorder,
) -> None:
    release = asyncio.Event()

    async def probe(target: ProbeTarget) -> ProbeResult:
        await release.wait()
        return OK

    scheduler = ProbeScheduler(ProbeLimits(), probe, recorded)
    both = targets(2)
    scheduler.set_targets(both)
    slot = scheduler.schedule.slots["svc/i0"]
    task = await running(scheduler)
    await until(lambda: scheduler.in_flight == 2)
    scheduler.set_targets({"svc/i0": both["svc/i0"]})
    assert scheduler.schedule.slots["svc/i0"] is slot
    release.set()
    await until(lambda: len(recorded.results) >= 3)
    await stop(task, scheduler)
    assert {k for k, _ in recorded.results} == {"svc/i0"}


def first_probes_due_by(scheduler: ProbeScheduler, seconds: float) -> int:
    return len({slot.key for slot in scheduler.schedule.due(scheduler.clock.virtual + seconds)})


@pytest.mark.parametrize("calls", [1, 200])
def test_new_targets_added_service_by_service_spread_their_first_probes_like_one_call(
    recorded: Recorder, calls: int
) -> None:
    # 2,000 new keys at 1,000 probes/s (budget 0.3 s of CPU at 0.3 ms a probe): about 2 s.
    scheduler = ProbeScheduler(ProbeLimits(cpu_budget=0.3), lambda t: asyncio.sleep(0, OK), recorded)
    every = targets(2000, interval=60.0)
    keys = list(every)
    per_call = len(keys) // calls
    for n in range(calls):
        scheduler.update({k: every[k] for k in keys[n * per_call : (n + 1) * per_call]}, ())
    early = first_probes_due_by(scheduler, 0.2)
    rest = first_probes_due_by(scheduler, 2.5)
    assert early < 1000  # without the shared backlog, 200 calls of 10 would all be due within 0.2 s
    assert early + rest == 2000


def test_update_drops_removed_keys_and_replaces_changed_ones_only(recorded: Recorder) -> None:
    scheduler = ProbeScheduler(ProbeLimits(), lambda t: asyncio.sleep(0, OK), recorded)
    three = targets(3)
    scheduler.update(three, ())
    kept = scheduler.schedule.slots["svc/i0"]
    changed = ProbeTarget("svc", "svc/i1", three["svc/i1"].instance, "/other", three["svc/i1"].check)
    scheduler.update({"svc/i1": changed}, ["svc/i2", "svc/unknown"])
    assert set(scheduler.targets) == {"svc/i0", "svc/i1"}
    assert scheduler.targets["svc/i1"] is changed
    assert scheduler.schedule.slots["svc/i0"] is kept
    assert "svc/i2" not in scheduler.schedule.slots
