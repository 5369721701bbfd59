"""Recovering after a registry outage: a read that comes back short must not shrink the table at once.

A registry that restarts empty (Redis without persistence, a Consul agent that lost its local
services) or whose leases expired while the gateway was cut off (etcd) answers its first reads
with fewer instances than are alive: they are re-registering, one heartbeat at a time. After an
outage the aggregator therefore starts a ``Recovery`` from the last applied set:

* an instance in a read is applied at once (it *reappeared*, or is new);
* an instance of the last applied set not seen in any read since the outage is *held*: it stays,
  with its health state (same key), until the grace period ends;
* an instance that reappeared and then leaves again left as an event the provider saw (an
  explicit deregistration): it goes at once, never held a second time;
* the recovery ends when nothing is held any more, or when the grace ends: the held instances
  then leave (the aggregator applies the provider's last read as it is).

Pure logic, no I/O and no clock of its own: the caller passes ``now``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from msa_gateway.model import Discovered, Instance


class Recovery:
    """The instances held since one outage, and when the hold ends."""

    __slots__ = ("held", "started", "until")

    def __init__(self, last_applied: Discovered, now: float, grace: float) -> None:
        self.held: dict[str, dict[str, Instance]] = {
            name: {i.id: i for i in instances} for name, instances in last_applied.items() if instances
        }
        self.started = now
        self.until = now + grace

    @property
    def held_count(self) -> int:
        """Return how many instances are held right now."""
        return sum(len(ids) for ids in self.held.values())

    def held_keys(self) -> list[str]:
        """Return ``service/id`` of every held instance, sorted (for logs and ``/health/``)."""
        return sorted(f"{name}/{iid}" for name, ids in self.held.items() for iid in ids)

    def expired(self, now: float) -> bool:
        """Return whether the grace period is over."""
        return now >= self.until

    def merge(self, read: Discovered) -> Discovered:
        """Return ``read`` plus the instances still held; forget every held one ``read`` contains.

        A service with held instances lists them with the ones read, sorted by id (the order
        providers emit), so reads that only bring back held instances change nothing; a service
        whose read came back empty keeps answering from its held instances.
        """
        held = self.held
        for name, instances in read.items():
            ids = held.get(name)
            if ids:
                for inst in instances:
                    ids.pop(inst.id, None)
                if not ids:
                    del held[name]
        if not held:
            return read
        merged: dict[str, tuple[Instance, ...]] = dict(read)
        for name, ids in held.items():
            merged[name] = tuple(sorted((*read.get(name, ()), *ids.values()), key=_by_id))
        return MappingProxyType(merged)

    def describe(self, now: float) -> Mapping[str, object]:
        """Return the state shown under ``discovery.recovery`` in ``/health/``."""
        return {
            "held_instances": self.held_keys(),
            "seconds_left": round(max(0.0, self.until - now), 3),
        }


def _by_id(instance: Instance) -> str:
    return instance.id
