"""The aggregator against scripted fake providers: no sockets, only the event loop.

A ``ScriptedProvider`` plays a list of steps; each ``watch()`` call (the first and every
restart) continues where the previous one stopped: a mapping is yielded as a snapshot, an
exception is raised (ending that ``watch()``), ``END`` returns from the generator and ``HOLD``
blocks until the test cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from types import MappingProxyType

import pytest

from msa_gateway.discovery.aggregator import Aggregator, Backoff
from msa_gateway.discovery.base import Provider
from msa_gateway.errors import DiscoveryError
from msa_gateway.model import Discovered, Instance, RecoveryConfig
from msa_gateway.observability.metrics import Metrics
from msa_gateway.runtime import Runtime
from msa_gateway.settings import Settings, parse_config

LOGGER = "msa_gateway.discovery"
FAST = Backoff(initial=0.001, maximum=0.004)
NO_GRACE = RecoveryConfig(grace=0)  # these tests apply every read as it is (recovery: test_recovery.py)
END = object()
HOLD = object()


class Pause(float):
    """A script step: stay up (yield nothing) for this many seconds."""


Step = Discovered | BaseException | object


def inst(iid: str, port: int = 9000, weight: int = 1) -> Instance:
    return Instance(id=iid, host="127.0.0.1", port=port, weight=weight, source="fake")


def snap(**services: Sequence[Instance]) -> Discovered:
    return MappingProxyType({name: tuple(insts) for name, insts in services.items()})


A = snap(web=[inst("a", 9001)])
A_COPY = snap(web=[inst("a", 9001)])  # equal to A, a distinct object
B = snap(web=[inst("a", 9001), inst("b", 9002)])
EMPTY: Discovered = MappingProxyType({})


class ScriptedProvider:
    """A provider whose every ``watch()`` plays the next steps of one shared script."""

    name = "fake"

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = list(steps)
        self.watches = 0
        self.watch_times: list[float] = []
        self.closed = False
        self.exhausted = asyncio.Event()

    async def watch(self) -> AsyncIterator[Discovered]:
        self.watches += 1
        self.watch_times.append(time.perf_counter())
        while self.steps:
            step = self.steps.pop(0)
            if step is END:
                return
            if step is HOLD:
                break
            if isinstance(step, Pause):
                await asyncio.sleep(step)
                continue
            if isinstance(step, BaseException):
                raise step
            yield step  # type: ignore[misc]
        self.exhausted.set()
        await asyncio.Event().wait()

    async def aclose(self) -> None:
        self.closed = True


class Harness:
    """An aggregator over ``provider`` recording every applied snapshot, run as a named task."""

    def __init__(
        self, provider: ScriptedProvider, backoff: Backoff = FAST, recovery: RecoveryConfig = NO_GRACE
    ) -> None:
        self.provider = provider
        self.metrics = Metrics()
        self.applied: list[Discovered] = []
        self.agg = Aggregator(provider, self.applied.append, self.metrics, backoff, recovery)
        self.task: asyncio.Task[None] | None = None

    def gauge(self, name: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, {"provider": "fake"})

    async def run_until_exhausted(self, timeout: float = 2.0) -> None:
        self.task = asyncio.create_task(self.agg.run(), name="test-aggregator")
        await asyncio.wait_for(self.provider.exhausted.wait(), timeout)
        await asyncio.sleep(0)  # let the aggregator handle the last yielded snapshot

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


@pytest.fixture
def harness() -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(steps: Sequence[Step], backoff: Backoff = FAST, recovery: RecoveryConfig = NO_GRACE) -> Harness:
        h = Harness(ScriptedProvider(steps), backoff, recovery)
        made.append(h)
        return h

    yield make
    for h in made:
        assert h.task is None or h.task.done(), "test forgot to stop its aggregator"


def records(caplog: pytest.LogCaptureFixture, level: int, fragment: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == level and fragment in r.getMessage()]


def test_scripted_provider_is_a_provider() -> None:
    assert isinstance(ScriptedProvider([]), Provider)


async def test_before_any_snapshot_not_loaded_and_down(harness: Callable[..., Harness]) -> None:
    h = harness([HOLD])
    assert not h.agg.loaded.is_set()
    assert h.gauge("gateway_discovery_up") == 0.0
    await h.run_until_exhausted()
    assert not h.agg.loaded.is_set()
    assert h.applied == []
    await h.stop()


async def test_first_snapshot_is_applied_and_sets_loaded(harness: Callable[..., Harness]) -> None:
    h = harness([A])
    before = time.time()
    await h.run_until_exhausted()
    assert h.agg.loaded.is_set()
    assert h.applied == [A]
    assert h.agg.up
    assert h.gauge("gateway_discovery_up") == 1.0
    last = h.gauge("gateway_discovery_last_success_timestamp_seconds")
    assert last is not None
    assert last >= before
    assert h.agg.last_success == last
    await h.stop()


async def test_identical_consecutive_snapshots_are_applied_once(harness: Callable[..., Harness]) -> None:
    h = harness([A, A_COPY, A, B, B, A])
    await h.run_until_exhausted()
    assert h.applied == [A, B, A]
    await h.stop()


async def test_unchanged_snapshot_after_a_restart_is_not_applied_again(
    harness: Callable[..., Harness],
) -> None:
    h = harness([A, DiscoveryError("connection lost"), A_COPY])
    await h.run_until_exhausted()
    assert h.provider.watches == 2
    assert h.applied == [A]
    assert h.agg.up
    await h.stop()


async def test_error_keeps_the_last_snapshot_and_marks_down(harness: Callable[..., Harness]) -> None:
    h = harness([A, DiscoveryError("redis at 127.0.0.1:1: connection refused"), HOLD])
    await h.run_until_exhausted()
    assert h.applied == [A]  # nothing swapped in: the last good set keeps serving
    assert h.agg.loaded.is_set()
    assert not h.agg.up
    assert h.agg.last_error == "redis at 127.0.0.1:1: connection refused"
    assert h.gauge("gateway_discovery_up") == 0.0
    await h.stop()


async def test_error_before_any_snapshot_applies_nothing_and_reports_the_reason(
    harness: Callable[..., Harness],
) -> None:
    h = harness([OSError("connection refused"), ConnectionError(), HOLD])
    await h.run_until_exhausted()
    assert h.applied == []
    assert not h.agg.loaded.is_set()
    assert not h.agg.up
    assert h.agg.last_error == "ConnectionError"  # an empty message falls back to the type
    assert h.agg.failures == 2
    await h.stop()


async def test_empty_snapshot_from_a_healthy_provider_is_applied(harness: Callable[..., Harness]) -> None:
    h = harness([A, EMPTY])
    await h.run_until_exhausted()
    assert h.applied == [A, EMPTY]
    assert h.agg.up
    await h.stop()


async def test_first_snapshot_may_be_empty_and_still_loads(harness: Callable[..., Harness]) -> None:
    h = harness([EMPTY])
    await h.run_until_exhausted()
    assert h.applied == [EMPTY]
    assert h.agg.loaded.is_set()
    await h.stop()


async def test_errors_never_swap_in_an_empty_set(harness: Callable[..., Harness]) -> None:
    failures: list[Step] = [DiscoveryError(f"failure {i}") for i in range(5)]
    h = harness([B, *failures, END, RuntimeError("boom"), HOLD])
    await h.run_until_exhausted()
    assert h.applied == [B]
    assert all(len(s) for s in h.applied)
    await h.stop()


async def test_outage_is_logged_once_and_recovery_once(
    harness: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    outage: list[Step] = [DiscoveryError("down") for _ in range(4)]
    # B stays up longer than the backoff cap, so the second failure is a new outage, not a flap
    h = harness([A, *outage, B, Pause(0.02), *outage, A])
    await h.run_until_exhausted()
    assert h.applied == [A, B, A]
    failed = records(caplog, logging.ERROR, "discovery provider failed")
    recovered = records(caplog, logging.INFO, "discovery provider recovered")
    assert len(failed) == 2, [r.getMessage() for r in failed]  # one per outage, not one per attempt
    assert len(recovered) == 2
    assert all("keeping the last known instances" in r.getMessage() for r in failed)
    assert h.provider.watches == 1 + 4 + 4
    await h.stop()


async def test_outage_at_start_up_is_logged_as_not_ready(
    harness: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    h = harness([DiscoveryError("down"), DiscoveryError("down"), DiscoveryError("down"), A])
    await h.run_until_exhausted()
    failed = records(caplog, logging.ERROR, "discovery provider failed")
    assert [r.getMessage() for r in failed] == ["discovery provider failed; not ready until it answers"]
    assert len(records(caplog, logging.INFO, "discovery provider recovered")) == 1
    assert h.agg.loaded.is_set()
    assert h.agg.failures == 0
    await h.stop()


async def test_restarts_wait_for_the_injected_backoff(harness: Callable[..., Harness]) -> None:
    backoff = Backoff(initial=0.02, maximum=0.08, factor=2.0)
    h = harness([DiscoveryError("down") for _ in range(5)], backoff=backoff)
    await h.run_until_exhausted()
    gaps = [b - a for a, b in zip(h.provider.watch_times, h.provider.watch_times[1:], strict=False)]
    assert h.provider.watches == 6
    caps = [min(0.08, 0.02 * 2**i) for i in range(5)]
    for gap, cap in zip(gaps, caps, strict=True):
        assert gap >= cap / 2 * 0.9, (gaps, caps)  # full jitter in [cap/2, cap]
    assert max(gaps) < 0.5
    await h.stop()


async def test_a_watch_that_ends_is_restarted(harness: Callable[..., Harness]) -> None:
    h = harness([A, END, B])
    await h.run_until_exhausted()
    assert h.provider.watches == 2
    assert h.applied == [A, B]
    await h.stop()


async def test_cancellation_stops_the_aggregator_without_marking_down(
    harness: Callable[..., Harness],
) -> None:
    h = harness([A])
    await h.run_until_exhausted()
    assert h.task is not None
    h.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await h.task
    assert h.agg.up
    assert h.agg.last_error is None


def test_backoff_grows_exponentially_with_full_jitter_and_a_cap() -> None:
    backoff = Backoff(initial=0.2, maximum=10.0, factor=2.0)
    rng = random.Random(7)
    for attempt in range(1, 40):
        cap = min(10.0, 0.2 * 2 ** (attempt - 1))
        for _ in range(20):
            delay = backoff.delay(attempt, rng)
            assert cap / 2 <= delay <= cap
    assert max(backoff.delay(30, rng) for _ in range(50)) <= 10.0
    spread = {round(backoff.delay(5, rng), 6) for _ in range(20)}
    assert len(spread) > 1, "jitter: retries of many gateways do not line up"


# --- the rebuild the aggregator triggers: Runtime.apply over 50 services x 20 instances ------


def big_snapshot(services: int = 50, per_service: int = 20) -> Discovered:
    return MappingProxyType(
        {
            f"svc-{s:02d}": tuple(inst(f"i{i}", 20000 + s * per_service + i) for i in range(per_service))
            for s in range(services)
        }
    )


async def test_rebuild_of_50_services_x_20_instances_is_fast() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    config = parse_config({"defaults": {"health_check": {"path": None}}}, "test.yaml")
    rt = Runtime(settings, config, provider=ScriptedProvider([]))
    try:
        first = big_snapshot()
        changed = MappingProxyType({**first, "svc-00": (*first["svc-00"][:-1], inst("new", 1))})
        timings = []
        for discovered in (first, changed, first, changed, first):
            t0 = time.perf_counter()
            rt.apply(discovered)
            timings.append(time.perf_counter() - t0)
            assert rt.snapshot.instance_count == 1000
            assert len(rt.snapshot.services) == 50
        assert rt.snapshot.version == 5
        # The target is 50 ms (bench/discovery.py measures it); leave room for a loaded CI machine.
        assert min(timings) < 0.2, timings
    finally:
        await rt.aclose()


async def test_a_provider_that_fails_right_after_each_first_snapshot_backs_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="msa_gateway.discovery")
    steps: list[object] = []
    for _ in range(6):
        steps += [A, DiscoveryError("watch refused after the read")]
    h = Harness(ScriptedProvider(steps), Backoff(initial=0.02, maximum=1.0))
    await h.run_until_exhausted(timeout=5)
    await h.stop()
    gaps = [b - a for a, b in zip(h.provider.watch_times, h.provider.watch_times[1:], strict=False)]
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    recovered = [r for r in caplog.records if r.getMessage().startswith("discovery provider recovered")]
    assert len(failed) == 6  # every outage is logged, even a flap right after a recovery
    assert [r.outages_last_minute for r in failed] == [1, 2, 3, 4, 5, 6]  # type: ignore[attr-defined]
    assert len(recovered) == 5
    assert [r.getMessage().endswith("(flapping)") for r in recovered] == [False, False, True, True, True]
    assert all(r.seconds >= 0 and r.failures == 1 for r in recovered)  # type: ignore[attr-defined]
    assert h.gauge("gateway_discovery_outages_total") == 6
    assert gaps[-1] > gaps[0] * 4  # the backoff keeps growing across flaps
