"""Recovery after a registry outage: missing instances are held for one grace period.

Driven through the aggregator with the scripted provider of ``test_aggregator.py``: a read
after an outage that comes back short must not shrink the applied set at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest

from msa_gateway.discovery.recovery import Recovery
from msa_gateway.errors import DiscoveryError
from msa_gateway.model import Discovered, RecoveryConfig
from tests.unit.discovery.test_aggregator import (
    EMPTY,
    FAST,
    HOLD,
    Harness,
    Pause,
    ScriptedProvider,
    inst,
    records,
    snap,
)

LOGGER = "msa_gateway.discovery"
a, b, c = inst("a", 9001), inst("b", 9002), inst("c", 9003)
ABC = snap(web=[a, b, c])
DOWN = DiscoveryError("redis at 127.0.0.1:1: connection reset")


def harness(steps: list[object], grace: float) -> Harness:
    return Harness(ScriptedProvider(steps), FAST, RecoveryConfig(grace=grace))


async def until(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def ids(discovered: Discovered) -> dict[str, list[str]]:
    return {name: sorted(i.id for i in insts) for name, insts in discovered.items()}


async def test_registry_back_empty_then_refilled_never_shrinks_the_applied_set(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    steps = [ABC, DOWN, EMPTY, snap(web=[b]), snap(web=[a, b]), snap(web=[a, b, c])]
    h = harness(steps, grace=30)
    await h.run_until_exhausted()
    assert [ids(s) for s in h.applied] == [{"web": ["a", "b", "c"]}]  # never fewer than were alive
    assert h.agg.recovery is None  # every instance came back: over before the grace
    assert records(caplog, logging.WARNING, "discovery recovering after an outage")
    assert records(caplog, logging.INFO, "every missing instance re-registered")
    assert h.gauge("gateway_discovery_recovering") == 0
    await h.stop()


async def test_instances_not_back_when_the_grace_ends_leave_then(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    h = harness([ABC, DOWN, snap(web=[a]), HOLD], grace=0.2)
    await h.run_until_exhausted()
    assert [ids(s) for s in h.applied] == [{"web": ["a", "b", "c"]}]
    assert h.gauge("gateway_discovery_recovering") == 1
    assert h.gauge("gateway_discovery_held_instances") == 2
    described = h.agg.describe()
    assert described is not None and described["held_instances"] == ["web/b", "web/c"]
    await until(lambda: len(h.applied) == 2)
    assert ids(h.applied[-1]) == {"web": ["a"]}
    (over,) = records(caplog, logging.WARNING, "did not re-register in the grace period")
    assert over.removed == ["web/b", "web/c"]  # type: ignore[attr-defined]
    assert h.gauge("gateway_discovery_recovering") == 0 and h.agg.describe() is None
    await h.stop()


async def test_a_service_read_back_empty_keeps_its_held_instances() -> None:
    other = inst("x", 9100)
    h = harness([snap(web=[a], api=[other]), DOWN, snap(api=[other]), HOLD], grace=30)
    await h.run_until_exhausted()
    assert len(h.applied) == 1 and ids(h.applied[0]) == {"web": ["a"], "api": ["x"]}
    await h.stop()


async def test_new_instances_are_applied_at_once_while_recovering() -> None:
    d = inst("d", 9004)
    h = harness([ABC, DOWN, snap(web=[d]), HOLD], grace=30)
    await h.run_until_exhausted()
    assert [ids(s) for s in h.applied] == [{"web": ["a", "b", "c"]}, {"web": ["a", "b", "c", "d"]}]
    await h.stop()


async def test_an_instance_that_reappeared_and_leaves_again_goes_at_once() -> None:
    # b came back, then its deregistration was seen as an event: not held a second time
    h = harness([ABC, DOWN, snap(web=[a, b]), snap(web=[a]), HOLD], grace=30)
    await h.run_until_exhausted()
    assert [ids(s) for s in h.applied] == [{"web": ["a", "b", "c"]}, {"web": ["a", "c"]}]
    assert h.agg.recovery is not None  # c is still held
    await h.stop()


async def test_removals_outside_a_recovery_are_applied_at_once() -> None:
    h = harness([ABC, snap(web=[a]), HOLD], grace=30)
    await h.run_until_exhausted()
    assert [ids(s) for s in h.applied] == [{"web": ["a", "b", "c"]}, {"web": ["a"]}]
    assert h.agg.recovery is None
    await h.stop()


async def test_grace_that_ends_while_the_provider_is_down_waits_for_its_next_read() -> None:
    h = harness([ABC, DOWN, snap(web=[a]), Pause(0.01), DOWN, Pause(0.15), snap(web=[a]), HOLD], grace=0.05)
    task_started = time.monotonic()
    h.task = asyncio.create_task(h.agg.run())
    await until(lambda: h.agg.failures >= 1 and h.agg.outages == 2)
    assert [ids(s) for s in h.applied] == [{"web": ["a", "b", "c"]}]  # down: the held ones stay
    await until(lambda: len(h.applied) == 2)
    assert ids(h.applied[-1]) == {"web": ["a"]}
    assert time.monotonic() - task_started >= 0.05
    await h.stop()


async def test_first_load_and_a_zero_grace_hold_nothing() -> None:
    h = harness([snap(web=[a]), DOWN, EMPTY, HOLD], grace=0)
    await h.run_until_exhausted()
    assert [ids(s) for s in h.applied] == [{"web": ["a"]}, {}]
    await h.stop()


def test_recovery_merge_sorts_by_id_and_forgets_what_reappears() -> None:
    rec = Recovery(ABC, now=0.0, grace=5.0)
    merged = rec.merge(snap(web=[c]))
    assert [i.id for i in merged["web"]] == ["a", "b", "c"]
    assert rec.held_keys() == ["web/a", "web/b"] and rec.held_count == 2
    assert not rec.expired(4.9) and rec.expired(5.0)
    assert rec.merge(snap(web=[a, b])) == snap(web=[a, b])
    assert rec.held == {}


@pytest.mark.parametrize(
    ("config", "ttl", "grace"),
    [
        (RecoveryConfig(), None, 10.0),  # nothing known: the fallback
        (RecoveryConfig(), 3.0, 3.0),  # the longest TTL seen
        (RecoveryConfig(maximum=20), 300.0, 20.0),  # bounded
        (RecoveryConfig(), float("inf"), 10.0),  # never-expiring instances say nothing
        (RecoveryConfig(grace=1.5), 300.0, 1.5),  # configured
        (RecoveryConfig(grace=0), 3.0, 0.0),  # off
    ],
)
def test_grace_resolution(config: RecoveryConfig, ttl: float | None, grace: float) -> None:
    assert config.resolve(ttl) == grace


def test_negative_grace_is_refused() -> None:
    with pytest.raises(ValueError, match="grace"):
        RecoveryConfig(grace=-1)


def test_the_grace_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from msa_gateway.runtime import Runtime
    from msa_gateway.settings import Settings, env_error, parse_config

    monkeypatch.setenv("DISCOVERY_RECOVERY_GRACE", "2.5")
    monkeypatch.setenv("DISCOVERY_RECOVERY_GRACE_MAX", "30")
    rt = Runtime(Settings(_env_file=None), parse_config({}, "gw.yaml"))  # type: ignore[call-arg]
    assert rt.aggregator.recovery_config == RecoveryConfig(grace=2.5, maximum=30)
    monkeypatch.setenv("DISCOVERY_RECOVERY_GRACE", "-1")
    with pytest.raises(ValueError) as info:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert env_error(info.value).startswith("environment: DISCOVERY_RECOVERY_GRACE: ")
