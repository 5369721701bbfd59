"""consistent_hash: stable keys, weights, and only the leaving instance's keys move."""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import pytest

from msa_gateway.balancing.consistent_hash import ConsistentHash, stable_hash
from msa_gateway.balancing.table import create_balancer
from msa_gateway.model import BalancerOptions, Instance
from tests.support.requests import request

KEYS = [b"user-%d" % n for n in range(100_000)]


def _insts(n: int, weight: int = 1) -> tuple[Instance, ...]:
    return tuple(Instance(id=f"i{k}", host=f"10.0.0.{k}", port=8000, weight=weight) for k in range(n))


def _owners(b: ConsistentHash, insts: tuple[Instance, ...]) -> list[str]:
    ring = b.ring(insts)
    return [ring.lookup(k).id for k in KEYS]


@pytest.mark.parametrize("leaving", range(10))
def test_removing_one_of_ten_moves_only_its_keys_and_adding_it_back_restores_them(leaving: int) -> None:
    insts = _insts(10)
    b = ConsistentHash.create(lambda _: 0)
    before = _owners(b, insts)
    gone = insts[leaving]
    after = _owners(b, tuple(i for i in insts if i is not gone))
    moved = sum(1 for x, y in zip(before, after, strict=True) if x != y)
    assert moved == before.count(gone.id)  # exactly the keys it owned, nothing else
    assert moved <= 0.12 * len(KEYS)
    assert _owners(b, insts) == before


def test_keys_spread_evenly_and_by_weight() -> None:
    b = ConsistentHash.create(lambda _: 0)
    shares = Counter(_owners(b, _insts(10)))
    assert max(shares.values()) <= 0.12 * len(KEYS) and min(shares.values()) >= 0.08 * len(KEYS)
    heavy = (*_insts(2), Instance(id="big", host="10.0.1.1", port=8000, weight=2))
    shares = Counter(_owners(b, heavy))
    assert 0.40 <= shares["big"] / len(KEYS) <= 0.60


def test_hash_is_stable_across_processes() -> None:
    # Python's hash() of bytes changes with PYTHONHASHSEED; the ring must not.
    assert stable_hash(b"abc") == int.from_bytes(hashlib.blake2b(b"abc", digest_size=8).digest(), "big")


@pytest.mark.parametrize(
    ("hash_key", "same", "other"),
    [
        ("header:X-User", {"headers": [(b"x-user", b"alice")]}, {"headers": [(b"x-user", b"bob")]}),
        ("cookie:sid", {"headers": [(b"cookie", b"a=1; sid=s1")]}, {"headers": [(b"cookie", b"sid=s2")]}),
        ("client_ip", {"peer": "10.1.1.1"}, {"peer": "10.1.1.2"}),
        ("path", {"path": b"/svc/a?x=1"}, {"path": b"/svc/b"}),
    ],
)
def test_key_sources_send_equal_keys_to_one_instance(
    hash_key: str, same: dict[str, Any], other: dict[str, Any]
) -> None:
    insts = _insts(10)
    b = create_balancer("consistent_hash", lambda _: 0, BalancerOptions(hash_key=hash_key))
    assert isinstance(b, ConsistentHash)
    picked = {b.pick_for(insts, request(**same)).id for _ in range(20)}
    assert len(picked) == 1
    others = {b.pick_for(insts, request(**other)).id for _ in range(20)}
    assert len(others) == 1


def test_request_without_key_is_balanced_in_turn() -> None:
    insts = _insts(3)
    b = create_balancer("consistent_hash", lambda _: 0, BalancerOptions(hash_key="header:X-User"))
    assert isinstance(b, ConsistentHash)
    assert Counter(b.pick_for(insts, request()).id for _ in range(30)) == {"i0": 10, "i1": 10, "i2": 10}
