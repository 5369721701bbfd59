"""GCRA with an injected clock: exact counts, bursts, several limits at once, idle-key eviction, bounded memory."""

from __future__ import annotations

import math
import random

import pytest

from msa_gateway.policies.gcra import Limit, LocalBuckets, decide, decide_one, params


def per_second(count: int, burst: int = 0) -> Limit:
    return Limit(count, 1.0, burst, f"{count}/second")


def admitted(buckets: LocalBuckets, key: str, times: list[float]) -> int:
    return sum(buckets.decide(key, t).allowed for t in times)


def test_burst_zero_admits_exactly_one_request_per_interval_however_many_arrive() -> None:
    buckets = LocalBuckets((per_second(100),))
    # 50 requests every millisecond for 10 s (500,000 requests): exactly 100/s get through, plus the first.
    times = [1000.0 + ms / 1000 for ms in range(10_000) for _ in range(50)]
    assert admitted(buckets, "k", times) == 1000


def test_a_burst_passes_at_once_then_the_steady_rate_applies() -> None:
    buckets = LocalBuckets((per_second(10, burst=4),))
    now = 50.0
    assert [buckets.decide("k", now).allowed for _ in range(6)] == [True] * 5 + [False]
    refused = buckets.decide("k", now)
    assert refused.retry_after == pytest.approx(0.1) and refused.remaining == (0,)
    assert buckets.decide("k", now + 0.1).allowed and not buckets.decide("k", now + 0.1).allowed


def test_remaining_and_reset_count_down_and_refill() -> None:
    buckets = LocalBuckets((per_second(10, burst=9),))
    first = buckets.decide("k", 0.0)
    assert first.remaining == (9,) and first.reset[0] == pytest.approx(0.1)
    for _ in range(8):
        buckets.decide("k", 0.0)
    last = buckets.decide("k", 0.0)
    assert last.allowed and last.remaining == (0,) and last.reset[0] == pytest.approx(1.0)
    assert buckets.decide("k", 1.0).remaining == (9,)  # a second later the bucket is full again


def test_every_limit_must_admit_and_a_refusal_advances_none_of_them() -> None:
    limits = params((per_second(100, burst=99), Limit(3, 60.0, 2, "3/minute")))
    tats = [10.0, 10.0]  # a new key: its TATs are now
    assert [decide(limits, tats, 10.0).allowed for _ in range(4)] == [True, True, True, False]
    before = list(tats)
    refused = decide(limits, tats, 10.0)
    assert not refused.allowed and tats == before
    assert refused.retry_after == pytest.approx(20.0)  # the minute limit frees one slot every 20 s
    assert refused.remaining == (97, 0)


def test_a_batch_already_admitted_is_applied_and_never_refused() -> None:
    tats = [0.0]
    batch = decide(params((per_second(10),)), tats, 5.0, applied=30)
    assert batch.allowed and tats == [pytest.approx(8.0)]


def test_keys_are_independent() -> None:
    buckets = LocalBuckets((per_second(1),))
    assert buckets.decide("a", 0.0).allowed and buckets.decide("b", 0.0).allowed
    assert not buckets.decide("a", 0.0).allowed


def test_idle_keys_are_evicted_as_new_keys_arrive() -> None:
    buckets = LocalBuckets((per_second(10),))
    for i in range(1000):
        buckets.decide(f"k{i}", i * 0.01)  # each key idle again 0.2 s after its request
    assert len(buckets) <= 21 and buckets.evicted == 0  # the keys of the last 0.2 s


def test_memory_is_bounded_and_the_least_recently_used_key_goes_first() -> None:
    buckets = LocalBuckets((per_second(1),), max_keys=3)
    for key in ("a", "b", "c"):
        buckets.decide(key, 0.0)
    buckets.decide("a", 0.0)  # a is used again: b is now the oldest
    buckets.decide("d", 0.0)
    assert set(buckets.tats) == {"a", "c", "d"} and buckets.evicted == 1
    assert len(buckets) == 3


def test_jittery_arrivals_do_not_cost_a_burst_zero_limit_part_of_its_rate() -> None:
    rng = random.Random(7)
    buckets = LocalBuckets((per_second(100),))
    now, times = 500.0, []
    while now < 510.0:  # 10 s of arrivals 0-4 ms apart (about 500/s, bunched as batches would be)
        times.append(now)
        now += rng.uniform(0, 0.004)
    assert 1000 <= admitted(buckets, "k", times) <= 1002


def test_a_late_request_never_lets_more_than_one_extra_through() -> None:
    buckets = LocalBuckets((per_second(10),))
    assert buckets.decide("k", 0.0).allowed  # TAT 0.1
    assert buckets.decide("k", 0.19).allowed  # 90 ms late: TAT 0.2, not 0.29
    assert buckets.decide("k", 0.2).allowed and not buckets.decide("k", 0.2).allowed


def test_the_one_limit_shortcut_answers_as_the_general_decision_does() -> None:
    rng = random.Random(11)
    limit = per_second(50, burst=3)
    buckets, tats = LocalBuckets((limit,)), [100.0]  # a new key's TAT is its first request's time
    now = 100.0
    for _ in range(5000):
        fast, general = buckets.decide("k", now), decide(params((limit,)), tats, now)
        assert fast == general and buckets.tats["k"] == tats
        now += rng.choice((0.0, 0.001, 0.005, 0.02, 0.3))


def test_admit_is_the_one_limit_decision_reduced_to_its_headers() -> None:
    rng = random.Random(17)
    limit = per_second(40, burst=2)
    fused, general = LocalBuckets((limit,)), LocalBuckets((limit,))
    now, refused = 100.0, 0
    for _ in range(5000):
        key = rng.choice("ab")
        state, decision = fused.admit(key, now), general.decide(key, now)
        if decision.allowed:
            assert state == (decision.remaining[0], math.ceil(decision.reset[0]))
        else:
            assert state is None
            refused += 1
        assert fused.tats == general.tats and list(fused.tats) == list(general.tats)  # same TATs, same order
        now += rng.choice((0.0, 0.001, 0.01, 0.05, 0.4))
    assert 0 < refused < 5000


def test_several_limits_admit_exactly_when_each_alone_would_and_wait_for_the_slowest() -> None:
    rng = random.Random(5)
    limits = (per_second(10, burst=2), Limit(20, 60.0, 3, "20/minute"))
    tats, now = [100.0, 100.0], 100.0
    for _ in range(5000):
        alone = [
            decide_one(*params((limit,))[0], [tat], now) for limit, tat in zip(limits, tats, strict=True)
        ]
        before = list(tats)
        joint = decide(params(limits), tats, now)
        assert joint.allowed == all(d.allowed for d in alone)
        if joint.allowed:
            assert joint.remaining == tuple(d.remaining[0] for d in alone)
            assert joint.reset == tuple(d.reset[0] for d in alone)
        else:
            assert tats == before
            assert joint.retry_after == max(d.retry_after for d in alone if not d.allowed)
        now += rng.choice((0.0, 0.01, 0.05, 0.2, 3.0))
