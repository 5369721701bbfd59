"""``/metrics`` of the active health checks, read from the scheduler at scrape time.

Nothing is counted on the probe path but plain integers and floats on the scheduler; this
collector turns them into Prometheus families when scraped. The scheduler is looked up on
each scrape, because a worker swaps in its own checker after the runtime is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from msa_gateway.health.lag import BUCKETS, LoopLag
from msa_gateway.health.scheduler import ProbeScheduler

RESULTS = ("ok", "failed", "inconclusive")


class ProbeStats(Collector):
    """Probes by result, skipped rounds, probe CPU, the interval stretch and the loop lag."""

    def __init__(self, scheduler: Callable[[], ProbeScheduler], lag: LoopLag) -> None:
        self._scheduler = scheduler
        self._lag = lag

    def collect(self) -> Iterator[Metric]:
        """Yield the families (same names in every process, so workers' scrapes merge)."""
        s = self._scheduler()
        probes = CounterMetricFamily(
            "gateway_health_probes",
            "Active health probes by result: ok, failed, inconclusive (timed out while the gateway "
            "itself lagged; not counted against the instance, sent again).",
            labels=["result"],
        )
        for result in RESULTS:
            probes.add_metric([result], s.results[result])
        yield probes
        yield CounterMetricFamily(
            "gateway_health_probes_skipped",
            "Probe rounds skipped because the instance's previous probe was still waiting or running.",
            value=s.schedule.skipped,
        )
        yield CounterMetricFamily(
            "gateway_health_probe_cpu_seconds",
            "CPU time of the active health probes (measured steps, doubled for the event loop).",
            value=s.cpu,
        )
        yield GaugeMetricFamily(
            "gateway_health_probe_interval_stretch",
            "Effective probe interval over the configured one: above 1 while the CPU budget "
            "(HEALTH_PROBE_CPU_BUDGET) cannot pay for the configured intervals.",
            value=s.effective_stretch,
        )
        yield GaugeMetricFamily(
            "gateway_health_probes_in_flight", "Active health probes out now.", value=s.in_flight
        )
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), self._lag.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            "gateway_event_loop_lag_seconds",
            "How late the gateway's event loop ran a task due every 50 ms (0 = on time).",
            buckets=buckets,
            sum_value=self._lag.total,
        )
