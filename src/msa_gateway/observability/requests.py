"""Request counters and latency histograms kept as plain numbers, exported at scrape time.

The proxy counts every request; doing that through prometheus-client's locked children costs a
few microseconds per request, most of it locking. The event loop is one thread, so the hot
path here is a dict increment and a bisect; ``RequestStats.collect`` turns the numbers into
``gateway_requests_total``, ``gateway_request_duration_seconds`` and
``gateway_requests_in_flight`` when Prometheus scrapes (a custom collector, as the
prometheus-client docs describe for exporting numbers kept elsewhere).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector


class LatencyHistogram:
    """Bucket counts, sum and count of one service's request durations."""

    __slots__ = ("bounds", "buckets", "count", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.buckets = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        """Count one request that took ``seconds``."""
        self.buckets[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """Return Prometheus buckets: (upper bound, requests at or below it), ending with +Inf."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.buckets, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(running)))
        return out


class RequestStats(Collector):
    """Every proxied request's outcome, as plain numbers (event-loop thread only)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts: dict[tuple[str, str, int], int] = {}
        self.histograms: dict[str, LatencyHistogram] = {}
        self.in_flight = 0

    def histogram(self, service: str) -> LatencyHistogram:
        """Return the histogram of ``service`` (kept for the life of the process)."""
        hist = self.histograms.get(service)
        if hist is None:
            hist = self.histograms[service] = LatencyHistogram(self.bounds)
        return hist

    def count(self, service: str, method: str, code: int) -> None:
        """Count one answered request."""
        key = (service, method, code)
        self.counts[key] = self.counts.get(key, 0) + 1

    def by_code(self, service: str) -> dict[str, float]:
        """Return the number of answered requests of ``service`` per status code."""
        out: dict[str, float] = {}
        for (svc, _, code), n in self.counts.items():
            if svc == service:
                out[str(code)] = out.get(str(code), 0) + n
        return out

    def collect(self) -> Iterator[Metric]:
        """Export the numbers in Prometheus form."""
        requests = CounterMetricFamily(
            "gateway_requests",
            "Requests answered, by service, method and status code.",
            labels=["service", "method", "code"],
        )
        for (service, method, code), n in sorted(self.counts.items()):
            requests.add_metric([service, method, str(code)], n)
        yield requests
        duration = HistogramMetricFamily(
            "gateway_request_duration_seconds",
            "Time from request to the end of the response, by service.",
            labels=["service"],
        )
        for service, hist in sorted(self.histograms.items()):
            duration.add_metric([service], hist.cumulative(), sum_value=hist.total)
        yield duration
        yield GaugeMetricFamily(
            "gateway_requests_in_flight", "Proxied requests being served now.", value=self.in_flight
        )

    def describe(self) -> Iterator[Metric]:
        """Describe the metric families without values (for registry name checks)."""
        return iter(())
