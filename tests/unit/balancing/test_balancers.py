"""Balancers: fairness, weights, least request."""

from __future__ import annotations

from collections import Counter

import pytest

from msa_gateway.balancing.least_request import LeastRequest
from msa_gateway.balancing.round_robin import RoundRobin, WeightedRoundRobin
from msa_gateway.balancing.table import BALANCER_NAMES, BALANCERS, create_balancer
from msa_gateway.model import Instance


def _insts(*weights: int) -> tuple[Instance, ...]:
    return tuple(Instance(id=f"i{n}", host="h", port=1000 + n, weight=w) for n, w in enumerate(weights))


@pytest.mark.parametrize("n", [1, 7, 100, 1001])
def test_round_robin_gives_each_n_over_k_plus_minus_one(n: int) -> None:
    insts = _insts(1, 1, 1)
    rr = RoundRobin.create(lambda _: 0)
    counts = Counter(rr.pick(insts).id for _ in range(n))
    assert max(counts.values()) - min(counts.get(i.id, 0) for i in insts) <= 1


def test_smooth_weighted_round_robin_is_exact_and_interleaved() -> None:
    insts = _insts(5, 1, 1)
    wrr = WeightedRoundRobin.create(lambda _: 0)
    seq = [wrr.pick(insts).id for _ in range(7)]
    assert Counter(seq) == {"i0": 5, "i1": 1, "i2": 1}
    assert seq[:3] != ["i0", "i0", "i0"]  # smooth: the heavy instance is not picked in a burst


def test_round_robin_uses_weights_when_they_differ() -> None:
    rr = RoundRobin.create(lambda _: 0)
    insts = _insts(1, 3)
    assert Counter(rr.pick(insts).id for _ in range(400)) == {"i0": 100, "i1": 300}


def test_weighted_state_resets_when_eligible_set_changes() -> None:
    wrr = WeightedRoundRobin.create(lambda _: 0)
    a = _insts(2, 1)
    for _ in range(5):
        wrr.pick(a)
    b = a[1:]
    assert {wrr.pick(b).id for _ in range(3)} == {"i1"}


def test_least_request_prefers_less_loaded() -> None:
    insts = _insts(1, 1)
    in_flight = {"i0": 10, "i1": 0}
    lr = LeastRequest.create(lambda i: in_flight[i.id])
    assert {lr.pick(insts).id for _ in range(50)} == {"i1"}
    in_flight.update(i0=0, i1=10)  # the load is read live, not kept by the balancer
    assert {lr.pick(insts).id for _ in range(50)} == {"i0"}


def test_least_request_scales_load_by_weight() -> None:
    insts = _insts(4, 1)
    in_flight = {"i0": 3, "i1": 1}  # (3+1)/4 = 1 < (1+1)/1 = 2
    lr = LeastRequest.create(lambda i: in_flight[i.id])
    assert {lr.pick(insts).id for _ in range(50)} == {"i0"}


def test_balancer_names_come_from_the_table() -> None:
    assert tuple(BALANCERS) == BALANCER_NAMES
    assert all(BALANCERS[name].name == name for name in BALANCER_NAMES)
    assert set(BALANCER_NAMES) == {
        "round_robin",
        "weighted_round_robin",
        "random",
        "least_request",
        "p2c_ewma",
        "consistent_hash",
        "sticky",
    }


@pytest.mark.parametrize("name", BALANCER_NAMES)
def test_every_balancer_only_picks_eligible(name: str) -> None:
    b = create_balancer(name)
    insts = _insts(1, 2, 3)
    for _ in range(50):
        chosen = b.pick(insts[1:])
        assert chosen in insts[1:]
        b.done(chosen)


def test_unknown_balancer_name() -> None:
    with pytest.raises(ValueError, match="unknown balancer"):
        create_balancer("nope")
