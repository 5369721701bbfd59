"""Per-service resilience state that outlives registry snapshots.

One ``ServiceGuard`` per service holds the passive health check (outlier detector), the
service's recent latency and the instances keeping requests waiting (``health/latency.py``),
the retry budget, the concurrency caps and whether the service is in panic mode. The runtime keeps one
guard per service name for as long as the service exists: a swap reconciles the instance keys
(an instance that stays keeps its counters) and a change of settings is applied in place, so
requests in flight, ejections and the panic state survive both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from time import monotonic
from typing import Any

from msa_gateway.health.latency import LatencyWindow, WaitTracker
from msa_gateway.health.outlier import OutlierDetector
from msa_gateway.health.panic import choose
from msa_gateway.model import Instance, ServiceOptions
from msa_gateway.proxy.limits import ConcurrencyLimits
from msa_gateway.proxy.retry import RetryBudget


class ServiceGuard:
    """Outlier detection, retry budget, concurrency caps and panic state of one service."""

    __slots__ = ("budget", "in_panic", "latency", "limits", "newly_slow", "options", "outlier", "waits")

    def __init__(self, options: ServiceOptions, keys: Iterable[str]) -> None:
        self.options = options
        self.outlier = OutlierDetector(options.outlier, keys)
        self.latency = LatencyWindow()
        self.waits = WaitTracker(options.outlier)
        self.newly_slow: frozenset[str] = frozenset()  # set by ``candidates``; the caller logs them
        self.budget = RetryBudget.for_policy(options.retry)
        self.limits = ConcurrencyLimits(options.limits, options.max_connections_per_instance)
        self.in_panic = False

    def update(self, options: ServiceOptions, keys: Iterable[str]) -> None:
        """Track exactly ``keys`` under ``options``; counts in flight and ejections carry over.

        A changed outlier block starts detection afresh (its thresholds and times changed).
        """
        keys = list(keys)
        if options.outlier != self.options.outlier:
            self.outlier = OutlierDetector(options.outlier, keys)
        else:
            self.outlier.reconcile(keys)
        self.waits.configure(options.outlier)
        self.waits.reconcile(keys)
        self.budget.configure(options.retry.budget_percent, options.retry.min_retry_concurrency)
        self.limits.configure(options.limits, options.max_connections_per_instance)
        self.limits.reconcile(keys)
        self.options = options

    def set_panic(self, panic: bool) -> bool:
        """Record whether the service is in panic mode; return True when that changed."""
        if panic is self.in_panic:
            return False
        self.in_panic = panic
        return True

    def candidates(
        self,
        instances: Sequence[Instance],
        keys: Sequence[str],
        healthy: Sequence[Instance],
        healthy_keys: Sequence[str],
        exclude: Sequence[str] = (),
    ) -> tuple[Sequence[Instance], bool]:
        """Return the instances to balance over now, and whether the service is in panic.

        Healthy means: passing active checks, not ejected and not slow (keeping requests waiting
        without answering). Below the panic threshold the whole set is used (Envoy's panic
        mode); instances in ``exclude`` (already tried by this request) are left out unless
        nothing else remains.
        """
        now = monotonic()
        ejected = self.outlier.ejected_keys(now)
        if self.waits.enabled:
            slow, self.newly_slow = self.waits.slow_keys(now, self.latency)
            if slow:
                ejected = ejected | slow
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
            "outlier": {
                "ejections_total": self.outlier.ejections_total,
                "slow_total": self.waits.slow_total,
                "slow": sorted(self.waits.slow),
            },
            "panic": self.in_panic,
        }
