"""The supervisor: crashed tasks restart with backoff, finished ones stay done, shutdown stops all."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from msa_gateway.observability.metrics import Metrics
from msa_gateway.tasks import RestartPolicy, Supervisor


class FakeTime:
    """A clock and a sleep the test controls: sleeping records the pause and advances the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class Crasher:
    """A task body that crashes its first ``n`` runs, then waits for ``release`` and returns."""

    def __init__(self, n: int, clock: FakeTime | None = None, runs_for: float = 0.0) -> None:
        self.n = n
        self.calls = 0
        self.clock, self.runs_for = clock, runs_for
        self.steady = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        if self.clock is not None:
            self.clock.now += self.runs_for  # how long this run "lasted" before it crashed
        if self.calls <= self.n:
            raise RuntimeError(f"boom {self.calls}")
        self.steady.set()
        await self.release.wait()


def supervisor(fake: FakeTime, **policy: float) -> Supervisor:
    return Supervisor(RestartPolicy(**policy), clock=fake.clock, sleep=fake.sleep)


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def sup(fake: FakeTime) -> AsyncIterator[Supervisor]:
    """A supervisor on the fake clock with the default policy, closed after the test."""
    s = supervisor(fake)
    yield s
    await s.aclose()


async def wait_for(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), 5)


async def test_a_crash_is_logged_once_and_restarted_with_doubling_backoff(
    caplog: pytest.LogCaptureFixture, fake: FakeTime, sup: Supervisor
) -> None:
    body = Crasher(3)
    with caplog.at_level(logging.ERROR, logger="msa_gateway.tasks"):
        handle = sup.spawn("health_probe", body, key="svc/a")
        await wait_for(body.steady)
    assert fake.sleeps == [0.1, 0.2, 0.4]
    assert body.calls == 4
    crashes = [r for r in caplog.records if r.getMessage() == "background task crashed"]
    assert [(r.__dict__["task"], r.__dict__["error"]) for r in crashes] == [
        ("health_probe:svc/a", f"RuntimeError('boom {i}')") for i in (1, 2, 3)
    ]
    assert [r.__dict__["restart_in"] for r in crashes] == [0.1, 0.2, 0.4]
    assert handle.restarts == 3
    assert sup.crashes == {"health_probe": 3}


async def test_backoff_is_capped_and_resets_after_a_stable_run() -> None:
    fake = FakeTime()
    sup = supervisor(fake, initial=1, maximum=4, stable_after=60)
    body = Crasher(5)
    sup.spawn("discovery", body)
    await wait_for(body.steady)
    assert fake.sleeps == [1, 2, 4, 4, 4]

    fake2 = FakeTime()
    sup2 = supervisor(fake2, initial=1, maximum=4, stable_after=60)
    stable = Crasher(3, clock=fake2, runs_for=61)  # every run lasted past stable_after
    sup2.spawn("discovery", stable)
    await wait_for(stable.steady)
    assert fake2.sleeps == [1, 1, 1]
    await sup.aclose()
    await sup2.aclose()


async def test_a_task_that_returns_is_done_and_not_restarted(fake: FakeTime, sup: Supervisor) -> None:
    calls = 0

    async def once() -> None:
        nonlocal calls
        calls += 1

    handle = sup.spawn("sweeper", once)
    assert handle.task is not None
    await asyncio.wait_for(handle.task, 5)
    assert calls == 1
    assert handle.done()
    assert fake.sleeps == []
    assert sup.describe() == []
    assert sup.summary() == {"running": 0, "crashes": 0, "kinds": {}, "failing": []}


async def test_restart_false_logs_and_counts_the_crash_but_stays_down(
    caplog: pytest.LogCaptureFixture, fake: FakeTime, sup: Supervisor
) -> None:
    body = Crasher(1)
    with caplog.at_level(logging.ERROR, logger="msa_gateway.tasks"):
        handle = sup.spawn("consul_service_watch", body, key="web", restart=False)
        assert handle.task is not None
        await asyncio.wait_for(handle.task, 5)
    assert body.calls == 1
    assert fake.sleeps == []
    assert [r.__dict__["task"] for r in caplog.records] == ["consul_service_watch:web"]
    assert caplog.records[0].__dict__["restart_in"] is None
    kinds = sup.summary()["kinds"]
    assert kinds == {
        "consul_service_watch": {
            "running": 0,
            "crashes": 1,
            "last_error": "RuntimeError('boom 1')",
            "last_crash": 1000.0,
        }
    }


async def test_describe_shows_state_restarts_last_error_and_since() -> None:
    fake = FakeTime()
    gate = asyncio.Event()
    in_backoff = asyncio.Event()

    async def held_sleep(seconds: float) -> None:
        in_backoff.set()
        await gate.wait()
        fake.now += seconds

    sup = Supervisor(RestartPolicy(stable_after=60), clock=fake.clock, sleep=held_sleep)
    body = Crasher(1)
    sup.spawn("health_probe", body, key="svc/a")
    quiet = Crasher(0)
    sup.spawn("upstream_idle_sweeper", quiet)
    await wait_for(in_backoff)
    await wait_for(quiet.steady)
    first, second = sup.describe()
    assert first.as_dict() == {
        "name": "health_probe:svc/a",
        "kind": "health_probe",
        "state": "restarting",
        "restarts": 0,
        "last_error": "RuntimeError('boom 1')",
        "since": 1000.0,
    }
    assert (second.name, second.state, second.restarts, second.last_error) == (
        "upstream_idle_sweeper",
        "running",
        0,
        None,
    )
    gate.set()
    await wait_for(body.steady)
    info = sup.describe()[0]
    assert (info.state, info.restarts, info.since) == ("running", 1, 1000.1)

    summary = sup.summary()
    assert summary["running"] == 2
    assert summary["crashes"] == 1
    assert summary["kinds"]["upstream_idle_sweeper"] == {"running": 1, "crashes": 0}
    assert summary["kinds"]["health_probe"]["crashes"] == 1
    assert [f["name"] for f in summary["failing"]] == ["health_probe:svc/a"]
    fake.now += 61  # it ran fine for stable_after: no longer failing, the crash stays counted
    assert sup.summary()["failing"] == []
    assert sup.summary()["kinds"]["health_probe"]["crashes"] == 1
    await sup.aclose()


async def test_a_handle_cancels_its_task_only_and_it_is_not_restarted(
    fake: FakeTime, sup: Supervisor
) -> None:
    a, b = Crasher(0), Crasher(0)
    ha = sup.spawn("health_probe", a, key="a")
    sup.spawn("health_probe", b, key="b")
    await wait_for(a.steady)
    await wait_for(b.steady)
    await ha.stop()
    assert ha.done()
    assert [i.name for i in sup.describe()] == ["health_probe:b"]
    assert a.calls == 1
    assert sup.crashes == {}


async def test_aclose_stops_every_task_newest_first_and_refuses_new_ones() -> None:
    fake = FakeTime()
    sup = supervisor(fake)
    stopped: list[str] = []

    def body(name: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                stopped.append(name)

        return run

    handles = [sup.spawn(name, body(name)) for name in ("discovery", "health_probe", "sweeper")]
    await asyncio.sleep(0)  # let them start
    await sup.aclose()
    assert all(h.done() for h in handles)
    assert stopped == ["sweeper", "health_probe", "discovery"]
    assert sup.describe() == []
    with pytest.raises(RuntimeError, match="supervisor is closed"):
        sup.spawn("late", body("late"))


async def test_aclose_is_bounded_and_names_a_task_that_will_not_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sup = Supervisor()
    release = asyncio.Event()
    started = asyncio.Event()

    async def stubborn() -> None:
        started.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # refuses to stop

    handle = sup.spawn("stubborn", stubborn)
    await wait_for(started)
    with caplog.at_level(logging.ERROR, logger="msa_gateway.tasks"):
        await sup.aclose(timeout=0.05)
    assert not handle.done()
    assert [r.__dict__["tasks"] for r in caplog.records] == [["stubborn"]]
    release.set()
    assert handle.task is not None
    await asyncio.wait_for(handle.task, 5)


async def test_metrics_count_crashes_and_live_tasks_by_kind(fake: FakeTime, sup: Supervisor) -> None:
    metrics = Metrics()
    metrics.track_tasks(sup)
    body = Crasher(2)
    sup.spawn("health_probe", body, key="svc/a")
    await wait_for(body.steady)
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    crashes = {s.labels["task"]: s.value for s in families["gateway_task_crashes"].samples}
    running = {s.labels["task"]: s.value for s in families["gateway_background_tasks"].samples}
    assert crashes == {"health_probe": 2.0}
    assert running == {"health_probe": 1.0}
