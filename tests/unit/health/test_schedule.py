"""The probe schedule without sockets: phases are stable and even, the budget stretches intervals."""

from __future__ import annotations

import itertools
import statistics

import pytest

from msa_gateway.health.schedule import Budget, Schedule, VirtualClock, next_slot, phase_of


def keys(n: int) -> list[str]:
    return [f"svc{i % 50}/inst-{i}@10.0.{i // 250}.{i % 250}:8080" for i in range(n)]


def run(schedule: Schedule, start: float, end: float, step: float) -> list[tuple[float, str]]:
    """Drive ``schedule`` from ``start`` to ``end``; every probe finishes at once."""
    probes: list[tuple[float, str]] = []
    now = start
    while now < end:
        for slot in schedule.due(now):
            probes.append((now, slot.key))
            slot.busy = False
        now += step
    return probes


def test_a_phase_is_the_same_in_every_process_and_lies_in_0_1() -> None:
    assert phase_of("svc/a") == phase_of("svc/a")
    assert phase_of("svc/a") != phase_of("svc/b")
    assert phase_of("svc/a") == pytest.approx(0.6353, abs=1e-4)  # blake2b: not Python's salted hash()
    assert all(0.0 <= phase_of(k) < 1.0 for k in keys(1000))


def test_next_slot_is_strictly_after_and_on_the_phase() -> None:
    assert next_slot(0.25, 4.0, 0.0) == 1.0
    assert next_slot(0.25, 4.0, 1.0) == 5.0
    assert next_slot(0.25, 4.0, 4.9) == 5.0
    assert next_slot(0.0, 2.0, 4.0) == 6.0


def test_20000_instances_every_5s_go_out_evenly_about_4000_a_second() -> None:
    schedule = Schedule()
    for key in keys(20_000):
        schedule.add(key, 5.0, now=0.0, first_within=5.0)
    assert schedule.rate == pytest.approx(4000.0)
    probes = run(schedule, 0.0, 30.0, 0.01)
    per_second = [sum(1 for t, _ in probes if s <= t < s + 1) for s in range(5, 30)]
    assert min(per_second) > 3700 and max(per_second) < 4300, per_second
    per_key: dict[str, list[float]] = {}
    for t, key in probes:
        per_key.setdefault(key, []).append(t)
    gaps = [b - a for times in per_key.values() for a, b in itertools.pairwise(times[1:])]  # after the first
    assert statistics.mean(gaps) == pytest.approx(5.0, abs=0.01)
    assert max(gaps) < 5.02  # once per interval: no bunching, no double probes
    assert schedule.skipped == 0


def test_an_instance_keeps_its_slot_when_added_again() -> None:
    one, two = Schedule(), Schedule()
    one.add("svc/a", 5.0, now=0.0, first_within=0.2)
    two.add("svc/a", 5.0, now=12.3, first_within=0.2)
    slots_one = [t for t, _ in run(one, 0.0, 40.0, 0.01) if t > 20]
    slots_two = [t for t, _ in run(two, 12.3, 40.0, 0.01) if t > 20]
    assert slots_one == pytest.approx(slots_two, abs=0.011)


def test_a_few_new_instances_are_probed_at_once_then_on_their_phase() -> None:
    schedule = Schedule()
    for key in keys(4):
        schedule.add(key, 5.0, now=100.0, first_within=0.2)
    probes = run(schedule, 100.0, 111.0, 0.01)
    first = {key: min(t for t, k in probes if k == key) for key in keys(4)}
    assert all(t <= 100.21 for t in first.values())
    for key in keys(4):
        later = sorted(t for t, k in probes if k == key)[1:]
        assert later and all(
            (t / 5.0 - phase_of(key)) % 1.0 < 0.01 or (t / 5.0 - phase_of(key)) % 1.0 > 0.99 for t in later
        )


def test_a_busy_instance_skips_its_slot_instead_of_queueing_a_second_probe() -> None:
    schedule = Schedule()
    schedule.add("svc/a", 1.0, now=0.0, first_within=0.2)
    (slot,) = schedule.due(1.0)  # the first probe; it never finishes
    assert slot.busy
    assert schedule.due(5.0) == []
    assert schedule.skipped >= 3


def test_a_removed_instance_is_not_probed_and_stops_asking_for_rate() -> None:
    schedule = Schedule()
    schedule.add("svc/a", 2.0, now=0.0, first_within=0.2)
    schedule.add("svc/b", 4.0, now=0.0, first_within=0.2)
    schedule.remove("svc/a")
    assert schedule.rate == pytest.approx(0.25)
    assert {k for _, k in run(schedule, 0.0, 10.0, 0.01)} == {"svc/b"}


def test_an_extra_probe_comes_besides_the_regular_slots() -> None:
    schedule = Schedule()
    schedule.add("svc/a", 10.0, now=0.0, first_within=0.2)
    run(schedule, 0.0, 1.0, 0.01)
    schedule.again("svc/a", 2.0)
    assert [round(t, 2) for t, _ in run(schedule, 1.0, 3.0, 0.01)] == [2.0]


def test_the_virtual_clock_stretches_every_interval_alike() -> None:
    clock = VirtualClock(now=1000.0)
    assert clock.advance(1010.0) == 10.0
    clock.set_stretch(1010.0, 4.0)
    assert clock.advance(1030.0) == 15.0
    assert clock.real_delay(16.0) == 4.0
    schedule = Schedule()
    for key in keys(2000):
        schedule.add(key, 5.0, now=clock.virtual, first_within=5.0)
    seen = 0
    now = 1030.0
    while now < 1070.0:  # 40 real seconds at stretch 4 = 10 virtual seconds = 2 rounds
        for slot in schedule.due(clock.advance(now)):
            seen += 1
            slot.busy = False
        now += 0.01
    assert seen == pytest.approx(4000, rel=0.02)


def test_the_budget_stretches_when_probing_would_cost_more_and_comes_back() -> None:
    budget = Budget(0.5, cost=0.0002)
    assert not budget.update(2000.0)  # 0.4 cores: within
    assert budget.stretch == 1.0
    for _ in range(1000):
        budget.observe(0.0005)  # probes got dearer: 2000/s x 0.5 ms = 1 core
    assert budget.cost == pytest.approx(0.0005, rel=0.01)
    assert budget.update(2000.0)
    assert budget.stretch == pytest.approx(2.2, rel=0.02)  # 2x, with 10% headroom
    assert not budget.update(2100.0)  # a small change keeps the stretch (no flapping)
    assert budget.update(500.0)  # fewer instances: back to the configured intervals
    assert budget.stretch == 1.0
    assert budget.allowed_rate() == pytest.approx(1000.0, rel=0.01)


def test_the_first_measurements_replace_the_initial_guess() -> None:
    budget = Budget(0.5)
    budget.observe(0.001)
    assert budget.cost == pytest.approx(0.001)


def test_a_lagging_loop_slows_probing_down_and_calm_seconds_bring_it_back() -> None:
    budget = Budget(0.5, cost=0.0001)
    assert budget.update(1000.0, lag=0.2)  # 0.2 cores is within budget, but the loop lags
    assert budget.stretch == pytest.approx(1.5)
    for _ in range(10):
        budget.update(1000.0, lag=0.2)
    assert budget.stretch == 8.0  # at most 8x
    assert not budget.update(1000.0, lag=0.03)  # between the two marks: held
    for _ in range(12):
        budget.update(1000.0, lag=0.0)
    assert budget.stretch == 1.0
    assert budget.cpu_stretch == 1.0
