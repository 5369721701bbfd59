"""Consistent hashing on a ring with virtual nodes (Envoy's ring_hash, Karger et al.).

Every instance owns ``virtual_nodes x weight`` points on a 64-bit ring, placed by a stable hash
of its id and address (the same on every gateway replica and after a restart, unlike Python's
``hash``). A request's key goes to the first point at or after the key's own hash. When an
instance leaves, only the keys on its points move (to the next points of the others); when it
comes back, they return. A request without a key is balanced like round robin.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar

from msa_gateway.balancing.keys import key_reader
from msa_gateway.balancing.round_robin import RoundRobin
from msa_gateway.model import BalancerOptions, Instance

if TYPE_CHECKING:
    from msa_gateway.proxy.request import ProxyRequest

RINGS_KEPT = 4


def stable_hash(data: bytes) -> int:
    """Return a 64-bit hash of ``data`` that is the same in every process."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class Ring:
    """The points of a set of instances, sorted, and the instance owning each."""

    __slots__ = ("instances", "owners", "points")

    def __init__(self, instances: tuple[Instance, ...], virtual_nodes: int) -> None:
        self.instances = instances
        pairs: list[tuple[int, int]] = []
        for n, inst in enumerate(instances):
            base = f"{inst.id}|{inst.address}#".encode()
            pairs.extend(
                (stable_hash(base + b"%d" % v), n) for v in range(virtual_nodes * max(1, inst.weight))
            )
        pairs.sort()
        self.points = [p for p, _ in pairs]
        self.owners = [n for _, n in pairs]

    def lookup(self, key: bytes) -> Instance:
        """Return the instance owning ``key``."""
        i = bisect.bisect_left(self.points, stable_hash(key))
        return self.instances[self.owners[i if i < len(self.points) else 0]]


class ConsistentHash:
    """Send equal keys to the same instance while it stays eligible."""

    name: ClassVar[str] = "consistent_hash"
    __slots__ = ("_fallback", "_read", "_ring", "_rings", "_vnodes")

    def __init__(self, options: BalancerOptions) -> None:
        self._read = key_reader(options.hash_key)
        self._vnodes = options.virtual_nodes
        self._ring: Ring | None = None  # the last one used
        self._rings: dict[tuple[Instance, ...], Ring] = {}
        self._fallback = RoundRobin()

    @classmethod
    def create(cls, load: Callable[[Instance], int]) -> ConsistentHash:
        """Return a balancer hashing the client's IP with the default ring size."""
        return cls(BalancerOptions())

    @classmethod
    def configured(cls, load: Callable[[Instance], int], options: BalancerOptions) -> ConsistentHash:
        """Return a balancer with the service's ``hash_key`` and ``virtual_nodes``."""
        return cls(options)

    def ring(self, eligible: Sequence[Instance]) -> Ring:
        """Return the ring of ``eligible``; recent sets are kept (a retry excludes the tried one)."""
        ring = self._ring
        if ring is not None and ring.instances is eligible:
            return ring
        key = tuple(eligible)
        ring = self._rings.pop(key, None) or Ring(key, self._vnodes)
        self._rings[key] = ring  # most recent last
        if len(self._rings) > RINGS_KEPT:
            del self._rings[next(iter(self._rings))]
        self._ring = ring
        return ring

    def pick(self, eligible: Sequence[Instance]) -> Instance:
        """Return an instance in turn: no request, no key."""
        return self._fallback.pick(eligible)

    def pick_for(self, eligible: Sequence[Instance], request: ProxyRequest) -> Instance:
        """Return the instance owning the request's key (in turn when it has none)."""
        key = self._read(request)
        if key is None:
            return self._fallback.pick(eligible)
        return self.lookup(eligible, key)

    def lookup(self, eligible: Sequence[Instance], key: bytes) -> Instance:
        """Return the instance of ``eligible`` owning ``key``."""
        return self.ring(eligible).lookup(key)

    def done(self, instance: Instance) -> None:
        """Do nothing: hashing keeps no per-request state."""
