"""Request counters and latency histograms kept as plain numbers, exported at scrape time.

The proxy counts every request; doing that through prometheus-client's locked children costs a
few microseconds per request, most of it locking. The event loop is one thread, so the hot
path here is a dict increment and a bisect; ``RequestStats`` turns the numbers into
``gateway_requests_total``, ``gateway_request_duration_seconds`` and
``gateway_requests_in_flight`` when Prometheus scrapes (a custom collector, as the
prometheus-client docs describe for exporting numbers kept elsewhere; ``families`` hands them
out a series at a time, see ``exposition.py``).

Only services that answered a request have a histogram in the exposition: a registry of
thousands of idle services costs the scrape nothing. Each bucket keeps the latest *sampled*
trace that fell in it, shown as an OpenMetrics exemplar (``trace_id``) when the scraper asks for
OpenMetrics; unsampled traces are never exported, so an exemplar naming one would lead nowhere.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from time import time as _wall  # a name of its own: no module attribute to look up per exemplar
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from msa_gateway.observability.exposition import (
    Family,
    chunked,
    escape_value,
    exemplar_suffix,
    go_float,
    line,
)

if TYPE_CHECKING:
    from msa_gateway.observability.tracing import Trace

REQUESTS = ("gateway_requests", "Requests answered, by service, method and status code.")
DURATION = ("gateway_request_duration_seconds", "Time from request to the end of the response, by service.")
IN_FLIGHT = ("gateway_requests_in_flight", "Proxied requests being served now.")
Exemplar = tuple[str, float, float]  # trace id, seconds, unix time


KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})


def method_label(method: str) -> str:
    """Return ``method`` when standard, else ``OTHER`` (a label's values stay few)."""
    return method if method in KNOWN_METHODS else "OTHER"


class LatencyHistogram:
    """Bucket counts, sum and count of one service's request durations."""

    __slots__ = ("bounds", "buckets", "count", "exemplars", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.buckets = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.exemplars: list[Exemplar | None] = [None] * len(self.buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float, trace: Trace | None = None) -> None:
        """Count one request that took ``seconds``; a sampled ``trace`` becomes its bucket's exemplar."""
        i = bisect_left(self.bounds, seconds)
        self.buckets[i] += 1
        self.total += seconds
        self.count += 1
        if trace is not None and trace.sampled:
            self.exemplars[i] = (trace.trace_text, seconds, _wall())

    def cumulative(self) -> list[tuple[str, float]]:
        """Return Prometheus buckets: (upper bound, requests at or below it), ending with +Inf."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.buckets, strict=True):
            running += n
            out.append((go_float(bound), float(running)))
        return out

    def series(self, name: str, labels: str, les: Sequence[str], openmetrics: bool) -> str:
        """Return the sample lines of this histogram (one consistent reading), exemplars in OpenMetrics.

        ``les`` are the bucket bounds as written (``0.005``, ..., ``+Inf``).
        """
        out, running = [], 0
        bucket = f"{name}_bucket"
        for le, n, ex in zip(les, self.buckets, self.exemplars, strict=True):
            running += n
            suffix = ""
            if openmetrics and ex is not None:
                suffix = exemplar_suffix(f'trace_id="{ex[0]}"', ex[1], ex[2])
            out.append(line(bucket, f'le="{le}",{labels}', running, suffix))
        out.append(line(f"{name}_count", labels, self.count))
        out.append(line(f"{name}_sum", labels, self.total))
        return "".join(out)


class RequestStats(Collector):
    """Every proxied request's outcome, as plain numbers (event-loop thread only)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts: dict[tuple[str, str, int], int] = {}
        self.histograms: dict[str, LatencyHistogram] = {}
        self.in_flight = 0

    def histogram(self, service: str) -> LatencyHistogram:
        """Return the histogram of ``service`` (kept for the life of the process, exported once used)."""
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
        """Export the numbers in Prometheus form (``families`` is the sliced equivalent)."""
        requests = CounterMetricFamily(*REQUESTS, labels=["service", "method", "code"])
        for (service, method, code), n in sorted(self.counts.items()):
            requests.add_metric([service, method, str(code)], n)
        yield requests
        duration = HistogramMetricFamily(*DURATION, labels=["service"])
        for service, hist in sorted(self.histograms.items()):
            if hist.count:
                duration.add_metric([service], hist.cumulative(), sum_value=hist.total)
        yield duration
        yield GaugeMetricFamily(*IN_FLIGHT, value=self.in_flight)

    def families(self, openmetrics: bool) -> Iterator[Family]:
        """Yield the three families; their chunks read the live numbers as the scrape reaches them."""
        yield Family(*REQUESTS, "counter", self._count_chunks())
        yield Family(*DURATION, "histogram", self._histogram_chunks(openmetrics))
        yield Family(*IN_FLIGHT, "gauge", (line(IN_FLIGHT[0], "", self.in_flight),))

    def _count_chunks(self) -> Iterator[str]:
        name = f"{REQUESTS[0]}_total"

        def render(row: tuple[tuple[str, str, int], int]) -> str:
            (service, method, code), n = row
            return line(name, f'code="{code}",method="{method}",service="{escape_value(service)}"', n)

        return chunked(list(self.counts.items()), render)

    def _histogram_chunks(self, openmetrics: bool) -> Iterator[str]:
        les = [go_float(bound) for bound in (*self.bounds, float("inf"))]
        for service, hist in list(self.histograms.items()):
            if hist.count:
                yield hist.series(DURATION[0], f'service="{escape_value(service)}"', les, openmetrics)

    def describe(self) -> Iterator[Metric]:
        """Describe the metric families without values (for registry name checks)."""
        return iter(())
