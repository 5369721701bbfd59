"""Per-service resilience state that outlives registry snapshots.

One ``ServiceGuard`` per service holds the passive health check (outlier detector), the retry
budget and the concurrency caps. The runtime keeps guards across swaps (reconciling the
instance keys, so an instance that stays keeps its counters) and replaces a guard only when
the service's settings change.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from msa_gateway.health.outlier import OutlierDetector
from msa_gateway.health.panic import choose
from msa_gateway.model import Instance, ServiceOptions
from msa_gateway.proxy.limits import ConcurrencyLimits
from msa_gateway.proxy.retry import RetryBudget


class ServiceGuard:
    """Outlier detection, retry budget and concurrency caps of one service."""

    __slots__ = ("budget", "limits", "options", "outlier")

    def __init__(self, options: ServiceOptions, keys: Iterable[str]) -> None:
        self.options = options
        self.outlier = OutlierDetector(options.outlier, keys)
        self.budget = RetryBudget.for_policy(options.retry)
        self.limits = ConcurrencyLimits(options.limits)

    def reconcile(self, keys: Iterable[str]) -> None:
        """Track exactly ``keys`` (instances that stay keep their state)."""
        keys = list(keys)
        self.outlier.reconcile(keys)
        self.limits.reconcile(keys)

    def candidates(
        self,
        instances: Sequence[Instance],
        keys: Sequence[str],
        healthy: Sequence[Instance],
        healthy_keys: Sequence[str],
        exclude: Sequence[str] = (),
    ) -> tuple[Sequence[Instance], bool]:
        """Return the instances to balance over now, and whether the service is in panic.

        Healthy means: passing active checks and not ejected. Below the panic threshold the
        whole set is used (Envoy's panic mode); instances in ``exclude`` (already tried by this
        request) are left out unless nothing else remains.
        """
        ejected = self.outlier.ejected_keys(time.monotonic())
        if ejected:
            pairs = [(i, k) for i, k in zip(healthy, healthy_keys, strict=True) if k not in ejected]
            eligible: Sequence[Instance] = [i for i, _ in pairs]
            eligible_keys: Sequence[str] = [k for _, k in pairs]
        else:
            eligible, eligible_keys = healthy, healthy_keys
        chosen, panic = choose(instances, eligible, self.options.panic_threshold)
        if exclude and chosen:
            chosen_keys = keys if panic else eligible_keys
            rest = [i for i, k in zip(chosen, chosen_keys, strict=True) if k not in exclude]
            if rest:
                return rest, panic
        return chosen, panic

    def describe(self) -> dict[str, Any]:
        """Return the live state for ``/services/{name}/info``."""
        return {
            "retry_budget": {
                "limit": self.budget.limit,
                "requests_active": self.budget.requests_active,
                "retries_active": self.budget.retries_active,
            },
            "limits": self.limits.snapshot(),
            "outlier": {"ejections_total": self.outlier.ejections_total},
        }
