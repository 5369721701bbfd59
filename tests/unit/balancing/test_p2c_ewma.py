"""p2c_ewma: the slow instance loses, load counts, and an idle slow instance is probed again."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from msa_gateway.balancing import p2c_ewma
from msa_gateway.balancing.p2c_ewma import P2CEwma
from msa_gateway.balancing.table import create_balancer
from msa_gateway.model import BalancerOptions, Instance

FAST, SLOW = 0.001, 0.050


def _insts(n: int = 3) -> tuple[Instance, ...]:
    return tuple(Instance(id=f"i{k}", host="h", port=1000 + k) for k in range(n))


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    c = _Clock()
    monkeypatch.setattr(time, "monotonic", c)
    return c


def _warm(b: P2CEwma, insts: tuple[Instance, ...], slow: Instance) -> None:
    for inst in insts:
        b.observe(inst, SLOW if inst is slow else FAST)


def test_slow_instance_gets_only_the_picks_where_it_is_not_sampled_against_a_fast_one(clock: _Clock) -> None:
    insts = _insts(3)
    b = P2CEwma.create(lambda _: 0)
    _warm(b, insts, insts[2])
    counts = Counter(b.pick(insts).id for _ in range(3000))
    assert counts["i2"] == 0  # of any pair holding it, the other one is cheaper
    assert counts["i0"] > 1000 and counts["i1"] > 1000


def test_requests_in_flight_multiply_the_cost() -> None:
    insts = _insts(2)
    in_flight = {"i0": 20, "i1": 0}
    b = P2CEwma.create(lambda i: in_flight[i.id])
    b.observe(insts[0], FAST)
    b.observe(insts[1], 10 * FAST)  # 10x slower but idle: 10 x 1 < 1 x 21
    assert {b.pick(insts).id for _ in range(20)} == {"i1"}


def test_peak_counts_at_once_and_fades_with_time(clock: _Clock) -> None:
    insts = _insts(1)
    b = P2CEwma.create(lambda _: 0)
    b.observe(insts[0], FAST)
    b.observe(insts[0], SLOW)
    assert b.score(insts[0], clock.now) == pytest.approx(SLOW)
    clock.now += 10.0  # one decay period
    assert b.score(insts[0], clock.now) == pytest.approx(SLOW / 2.718281828, rel=1e-6)


def test_an_idle_slow_instance_is_probed_again_after_its_cost_decays(clock: _Clock) -> None:
    insts = _insts(2)
    b = create_balancer("p2c_ewma", lambda _: 0, BalancerOptions(decay=1.0))
    assert isinstance(b, P2CEwma)
    _warm(b, insts, insts[1])
    picks = []
    for _ in range(200):  # 100 ms apart, the fast one answering in 1 ms
        clock.now += 0.1
        inst = b.pick(insts)
        picks.append(inst.id)
        b.observe(inst, SLOW if inst is insts[1] else FAST)
    assert picks[0] == "i0"
    assert "i1" in picks  # decayed below the fast one's cost at some point: probed
    assert picks.count("i1") < 20  # ... and left again at once, after one slow answer


def test_never_observed_instance_scores_by_its_load_not_zero(clock: _Clock) -> None:
    insts = _insts(2)
    in_flight = {"i0": 0, "i1": 3}
    b = P2CEwma.create(lambda i: in_flight[i.id])
    b.observe(insts[0], SLOW)
    assert b.score(insts[1], clock.now) == pytest.approx(3 * p2c_ewma.PENALTY)
    assert {b.pick(insts).id for _ in range(20)} == {"i0"}


def test_weight_divides_the_score(clock: _Clock) -> None:
    light, heavy = Instance(id="a", host="h", port=1), Instance(id="b", host="h", port=2, weight=4)
    b = P2CEwma.create(lambda _: 0)
    b.observe(light, FAST)
    b.observe(heavy, 2 * FAST)
    assert {b.pick((light, heavy)).id for _ in range(20)} == {"b"}
