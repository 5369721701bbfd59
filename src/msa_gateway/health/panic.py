"""What to balance over when too few instances are healthy: Envoy's panic threshold.

When the eligible share (healthy by active probes and not ejected by outlier detection) of a
service's instances falls *below* ``threshold`` percent, the balancer uses every instance
(panic mode): a partly healthy service keeps serving instead of piling all its traffic on the
few instances left, and a total outage of the health checks cannot take it down. A threshold of
0 disables panic mode: the balancer uses only eligible instances, and none means fail fast
(503 with ``Retry-After``). Default 50%, as Envoy's ``healthy_panic_threshold``.

With 2 instances and 1 eligible the share is exactly 50%, not below it: no panic, the
healthy one takes everything. Pure, allocation-free apart from the small result tuple.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from msa_gateway.model import DEFAULT_PANIC_THRESHOLD

T = TypeVar("T")


# The instances to balance over, and whether that is because of panic mode. A plain tuple: this
# is every request's path, and a named tuple's constructor is Python code (0.2 µs).
Choice = tuple[Sequence[T], bool]


def validate_threshold(threshold: float) -> float:
    """Return ``threshold`` if it is a percentage, else raise ``ValueError``."""
    if not 0.0 <= threshold <= 100.0:
        raise ValueError("panic threshold must be between 0 and 100 percent")
    return threshold


def choose(
    all_instances: Sequence[T], eligible: Sequence[T], threshold: float = DEFAULT_PANIC_THRESHOLD
) -> Choice[T]:
    """Return ``eligible``, or ``all_instances`` in panic mode (eligible share below ``threshold`` %).

    The sequences are returned as given, not copied. An empty service is never in panic.
    """
    total = len(all_instances)
    if total == 0 or threshold <= 0.0 or len(eligible) * 100.0 >= threshold * total:
        return eligible, False
    return all_instances, True
