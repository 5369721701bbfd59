"""Prometheus metrics on the gateway's own registry; label values are always bounded.

Labels: ``service`` is a registered service name or ``unknown``; ``method`` is one of the
standard methods or ``OTHER``; ``code`` is the numeric status; ``instance`` is ``host:port`` of
a registered instance. A raw path never becomes a label value. The exposition is rendered by
``exposition.py``, a slice at a time, in the Prometheus text format or OpenMetrics.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from msa_gateway.observability import exposition
from msa_gateway.observability.instances import InstanceGauge, RouteLike, ServiceStates
from msa_gateway.observability.ratelimit_counts import DecisionCounts
from msa_gateway.observability.requests import RequestStats
from msa_gateway.tasks import Supervisor

if TYPE_CHECKING:
    from msa_gateway.observability.otlp import Exporter

UNKNOWN_SERVICE = "unknown"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class OrderedRegistry(CollectorRegistry):
    """A ``CollectorRegistry`` that remembers its collectors in order, for the sliced exposition."""

    def __init__(self) -> None:
        super().__init__(auto_describe=True)
        self.collectors: list[Collector] = []

    def register(self, collector: Collector) -> None:
        """Register ``collector`` and keep it for ``exposition.pieces``."""
        super().register(collector)
        self.collectors.append(collector)

    def unregister(self, collector: Collector) -> None:
        """Unregister ``collector``."""
        super().unregister(collector)
        self.collectors.remove(collector)


class Metrics:
    """Every metric the gateway exports, on one ``CollectorRegistry`` owned by the runtime.

    ``per_instance`` (``METRICS_PER_INSTANCE``) exports ``gateway_instance_up`` per instance;
    the per-service instance gauges are exported either way.
    """

    def __init__(self, *, per_instance: bool = True) -> None:
        self.registry = OrderedRegistry()
        # Set by a supervised worker: one scrape answers with every worker's numbers merged.
        self.aggregate: Callable[[bool], Awaitable[bytes]] | None = None
        r = self.registry
        self.requests = RequestStats(BUCKETS)
        r.register(self.requests)
        self.upstream_errors = Counter(
            "gateway_upstream_errors",
            "Failures talking to an instance, by service and kind.",
            ["service", "kind"],
            registry=r,
        )
        self.config_reloads = Counter(
            "gateway_config_reloads",
            "Reloads of the YAML file by result: ok, error (the running config stays), unchanged.",
            ["result"],
            registry=r,
        )
        self.route_split = Counter(
            "gateway_route_split",
            "Requests a split route (split:, match_first:) sent to each of its services.",
            ["route", "service"],
            registry=r,
        )
        self.websocket_connections = Gauge(
            "gateway_websocket_connections",
            "WebSocket connections open through the gateway, by service.",
            ["service"],
            registry=r,
        )
        self.instance_up = InstanceGauge(export=per_instance)
        r.register(self.instance_up)
        self.discovery_up = Gauge(
            "gateway_discovery_up",
            "1 when the discovery provider's last read succeeded.",
            ["provider"],
            registry=r,
        )
        self.discovery_last_success = Gauge(
            "gateway_discovery_last_success_timestamp_seconds",
            "Unix time of the provider's last successful read.",
            ["provider"],
            registry=r,
        )
        self.discovery_outages = Counter(
            "gateway_discovery_outages",
            "Outages of the discovery provider (each counted once, when it starts).",
            ["provider"],
            registry=r,
        )
        self.discovery_recovering = Gauge(
            "gateway_discovery_recovering",
            "1 while the registry recovers from an outage (missing instances are held).",
            ["provider"],
            registry=r,
        )
        self.discovery_held = Gauge(
            "gateway_discovery_held_instances",
            "Instances kept while the registry recovers, not yet re-registered.",
            ["provider"],
            registry=r,
        )
        self.registry_services = Gauge(
            "gateway_registry_services", "Services in the current snapshot.", registry=r
        )
        self.registry_instances = Gauge(
            "gateway_registry_instances", "Instances in the current snapshot.", registry=r
        )
        self.registry_swaps = Counter("gateway_registry_swaps", "Registry snapshots swapped in.", registry=r)
        self.ejections = Counter(
            "gateway_instance_ejections",
            "Instances ejected by passive health checks (outlier detection).",
            ["service", "instance"],
            registry=r,
        )
        self.retries = Counter(
            "gateway_retries",
            "Requests sent again to another instance, by reason.",
            ["service", "reason"],
            registry=r,
        )
        self.retries_refused = Counter(
            "gateway_retries_refused",
            "Failed attempts not tried again, by the rule that said no (budget_exhausted, max_retries, ...).",
            ["service", "reason"],
            registry=r,
        )
        self.hedges = Counter(
            "gateway_hedges",
            "Hedged attempts: sent, or not sent (budget_exhausted, no_other_instance).",
            ["service", "result"],
            registry=r,
        )
        self.hedge_wins = Counter(
            "gateway_hedge_wins",
            "Requests a hedge answered before the first attempt.",
            ["service"],
            registry=r,
        )
        self.slow_ejections = Counter(
            "gateway_slow_ejections",
            "Instances taken out of rotation for keeping requests waiting without an answer.",
            ["service"],
            registry=r,
        )
        self.overflow = Counter(
            "gateway_overflow",
            "Requests refused at once because a concurrency cap was full.",
            ["service"],
            registry=r,
        )
        self.ratelimit_decisions = DecisionCounts()
        r.register(self.ratelimit_decisions)
        self.ratelimit_backend_up = Gauge(
            "gateway_ratelimit_backend_up",
            "1 while the rate-limit backend answers (0 during an outage: on_backend_error applies).",
            ["backend"],
            registry=r,
        )
        self.panic = Gauge(
            "gateway_service_panic",
            "1 while a service balances over all instances (panic mode).",
            ["service"],
            registry=r,
        )

    def track_tasks(self, tasks: Supervisor) -> None:
        """Export the background tasks of ``tasks`` (counted at scrape time, by kind)."""
        self.registry.register(TaskStats(tasks))

    def track_exporter(self, exporter: Exporter | None) -> None:
        """Export ``gateway_trace_spans_total{result}`` (exported, dropped, failed) when spans go out."""
        if exporter is not None:
            self.registry.register(SpanStats(exporter))

    def track_services(self, services: Callable[[], Mapping[str, RouteLike]]) -> None:
        """Export the instance counts per service of the routes ``services`` returns at scrape time."""
        self.registry.register(ServiceStates(services))

    def render(self, openmetrics: bool = False) -> bytes:
        """Return this process's exposition at once (blocks for its whole length: off the request path)."""
        return exposition.render(self.registry.collectors, openmetrics)

    def stream(self, openmetrics: bool = False) -> AsyncIterator[bytes]:
        """Return this process's exposition piece by piece, the event loop running in between."""
        return exposition.stream(self.registry.collectors, openmetrics)

    async def render_async(self, openmetrics: bool = False) -> bytes:
        """Return this process's whole exposition, rendered a slice at a time."""
        return await exposition.render_async(self.registry.collectors, openmetrics)

    async def scrape(self, openmetrics: bool = False) -> AsyncIterator[bytes]:
        """Yield what ``/metrics`` shows: this process's metrics, or all workers' when supervised."""
        if self.aggregate is not None:
            yield await self.aggregate(openmetrics)
            return
        async for piece in self.stream(openmetrics):
            yield piece


class TaskStats(Collector):
    """``gateway_background_tasks`` and ``gateway_task_crashes_total`` by task kind, read at scrape time."""

    def __init__(self, tasks: Supervisor) -> None:
        self._tasks = tasks

    def collect(self) -> Iterator[Metric]:
        """Yield the live task count and the crash count of every kind seen so far."""
        running = GaugeMetricFamily(
            "gateway_background_tasks", "Background tasks alive, by kind.", labels=["task"]
        )
        crashes = CounterMetricFamily(
            "gateway_task_crashes",
            "Background task crashes, by kind (each restarted with backoff).",
            labels=["task"],
        )
        for kind, row in self._tasks.kinds().items():
            running.add_metric([kind], row["running"])
            crashes.add_metric([kind], row["crashes"])
        yield running
        yield crashes


class SpanStats(Collector):
    """``gateway_trace_spans_total{result}``, read from the exporter's counts at scrape time."""

    def __init__(self, exporter: Exporter) -> None:
        self._exporter = exporter

    def collect(self) -> Iterator[Metric]:
        """Yield the spans exported, dropped (queue full) and failed (receiver down or refusing)."""
        family = CounterMetricFamily(
            "gateway_trace_spans", "Spans of sampled requests, by what became of them.", labels=["result"]
        )
        for result, count in self._exporter.counts.items():
            family.add_metric([result], count)
        yield family
