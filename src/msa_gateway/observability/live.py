"""Per-second rates for the live dashboard: deltas of the request counters, computed once per tick.

The proxy already counts every request in ``RequestStats`` (plain numbers, event-loop thread).
Once per tick the dashboard's producer reads those totals, subtracts the previous tick's and
turns the difference into requests per second, the share of 5xx answers and the 99th
percentile of the latency histogram, per service. Nothing here runs per request, and the work
per tick is one pass over the counters (bounded: service x method x code).

The percentile is estimated from the bucket deltas as Prometheus' ``histogram_quantile`` does:
linear interpolation inside the bucket that holds the rank, and the highest finite bound when
the rank falls in ``+Inf``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from msa_gateway.observability.requests import RequestStats

QUANTILE = 0.99


@dataclass(frozen=True, slots=True)
class ServiceRates:
    """One service's traffic over the last tick."""

    rps: float
    error_ratio: float | None  # 5xx answers / answers; None when there were no answers
    p99_ms: float | None  # None when there were no answers

    def as_dict(self) -> dict[str, float | None]:
        """Return the JSON form (rounded for display)."""
        return {
            "rps": round(self.rps, 2),
            "error_ratio": None if self.error_ratio is None else round(self.error_ratio, 4),
            "p99_ms": None if self.p99_ms is None else round(self.p99_ms, 2),
        }


IDLE = ServiceRates(0.0, None, None)


@dataclass(slots=True)
class _Totals:
    answers: int = 0
    errors: int = 0
    buckets: tuple[int, ...] = ()


def quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """Return the ``q`` quantile of a histogram with per-bucket ``counts`` (last one ``+Inf``).

    ``bounds`` are the finite upper bounds; None when the histogram is empty.
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    below = 0
    for i, n in enumerate(counts):
        if n and below + n >= rank:
            if i >= len(bounds):  # the +Inf bucket: the highest finite bound, as Prometheus does
                return bounds[-1] if bounds else None
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bounds[i] - lower) * (rank - below) / n
        below += n
    return bounds[-1] if bounds else None


class RateWindow:
    """The previous tick's totals per service, and the rates since then."""

    def __init__(self, stats: RequestStats) -> None:
        self._stats = stats
        self._last: dict[str, _Totals] = {}
        self._at: float | None = None

    def _totals(self) -> dict[str, _Totals]:
        totals: dict[str, _Totals] = {}
        for (service, _, code), n in self._stats.counts.items():
            row = totals.get(service)
            if row is None:
                row = totals[service] = _Totals()
            row.answers += n
            if code >= 500:
                row.errors += n
        for service, hist in self._stats.histograms.items():
            row = totals.get(service)
            if row is None:
                row = totals[service] = _Totals()
            row.buckets = tuple(hist.buckets)
        return totals

    def tick(self, now: float) -> dict[str, ServiceRates] | None:
        """Return each service's rates since the previous call; None on the first call (no baseline)."""
        totals = self._totals()
        last, since = self._last, self._at
        self._last, self._at = totals, now
        if since is None or now <= since:
            return None
        elapsed = now - since
        bounds = self._stats.bounds
        out: dict[str, ServiceRates] = {}
        for service, row in totals.items():
            before = last.get(service, _Totals())
            answers = row.answers - before.answers
            if answers <= 0:
                out[service] = IDLE
                continue
            errors = row.errors - before.errors
            old = before.buckets or (0,) * len(row.buckets)
            delta = [a - b for a, b in zip(row.buckets, old, strict=True)]
            p99 = quantile(QUANTILE, bounds, delta)
            out[service] = ServiceRates(
                rps=answers / elapsed,
                error_ratio=errors / answers,
                p99_ms=None if p99 is None else p99 * 1000.0,
            )
        return out

    def reset(self) -> None:
        """Forget the previous tick (the next ``tick`` starts a new baseline)."""
        self._last, self._at = {}, None
