"""Instance and service health as metrics, kept as plain numbers and exported a slice at a time.

``gateway_instance_up{service,instance}`` has one series per registered instance: 20,000 of them
in a large registry. prometheus-client's labelled ``Gauge`` builds every child's sample in one
``collect()`` (about 3 µs each, 60 ms at 20,000, all of it blocking the loop), so the values live
in a dict here and ``families`` hands them out in chunks. With ``METRICS_PER_INSTANCE=false`` the
per-instance series are not exported at all; ``gateway_service_instances`` and
``gateway_service_healthy_instances`` (one series per service, read from the current snapshot at
scrape time) always are, and are what alerts on "a service without healthy instances" need.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from msa_gateway.observability.exposition import Family, chunked, escape_value, line

INSTANCE_UP = ("gateway_instance_up", "1 when the instance passes its health checks, else 0.")
SERVICE_INSTANCES = ("gateway_service_instances", "Instances registered for the service.")
SERVICE_HEALTHY = (
    "gateway_service_healthy_instances",
    "Instances of the service that pass their health checks (0: requests get 503 or panic mode).",
)


class _Child:
    """What ``InstanceGauge.labels`` returns: ``set`` one instance's value."""

    __slots__ = ("_key", "_values")

    def __init__(self, values: dict[tuple[str, str], float], key: tuple[str, str]) -> None:
        self._values = values
        self._key = key

    def set(self, value: float) -> None:
        """Set the instance's value."""
        self._values[self._key] = float(value)


class InstanceGauge(Collector):
    """``gateway_instance_up`` with the ``labels(...).set()`` / ``remove()`` calls of a labelled Gauge."""

    def __init__(self, *, export: bool = True) -> None:
        self.export = export
        self.values: dict[tuple[str, str], float] = {}

    def labels(self, service: str, instance: str) -> _Child:
        """Return the setter of one instance's value."""
        return _Child(self.values, (service, instance))

    def remove(self, service: str, instance: str) -> None:
        """Forget one instance (KeyError when it has no value, as a Gauge raises)."""
        del self.values[(service, instance)]

    def collect(self) -> Iterator[Metric]:
        """Export every instance's value (``families`` is the sliced equivalent)."""
        if self.export:
            family = GaugeMetricFamily(*INSTANCE_UP, labels=["service", "instance"])
            for (service, instance), value in self.values.items():
                family.add_metric([service, instance], value)
            yield family

    def families(self, openmetrics: bool) -> Iterator[Family]:
        """Yield ``gateway_instance_up`` read in chunks, or nothing when per-instance series are off."""
        if self.export:
            yield Family(*INSTANCE_UP, "gauge", self._chunks())

    def _chunks(self) -> Iterator[str]:
        def render(row: tuple[tuple[str, str], float]) -> str:
            (svc, inst), value = row
            return line(
                INSTANCE_UP[0], f'instance="{escape_value(inst)}",service="{escape_value(svc)}"', value
            )

        return chunked(list(self.values.items()), render)

    def describe(self) -> Iterator[Metric]:
        """No fixed description (values appear as instances register)."""
        return iter(())


class RouteLike(Protocol):
    """What the service gauges read of a snapshot's service route."""

    @property
    def instances(self) -> Sequence[object]:
        """Every registered instance."""
        ...

    @property
    def eligible(self) -> Sequence[object]:
        """The instances that pass their health checks."""
        ...


class ServiceStates(Collector):
    """``gateway_service_instances`` and ``gateway_service_healthy_instances``, from the live snapshot."""

    def __init__(self, services: Callable[[], Mapping[str, RouteLike]]) -> None:
        self._services = services

    def collect(self) -> Iterator[Metric]:
        """Export both gauges for every service of the current snapshot."""
        total = GaugeMetricFamily(*SERVICE_INSTANCES, labels=["service"])
        healthy = GaugeMetricFamily(*SERVICE_HEALTHY, labels=["service"])
        for name, route in self._services().items():
            total.add_metric([name], len(route.instances))
            healthy.add_metric([name], len(route.eligible))
        yield total
        yield healthy

    def families(self, openmetrics: bool) -> Iterator[Family]:
        """Yield both gauges, read in chunks of services."""
        yield Family(*SERVICE_INSTANCES, "gauge", self._chunks(SERVICE_INSTANCES[0], lambda r: r.instances))
        yield Family(*SERVICE_HEALTHY, "gauge", self._chunks(SERVICE_HEALTHY[0], lambda r: r.eligible))

    def _chunks(self, name: str, members: Callable[[RouteLike], Sequence[object]]) -> Iterator[str]:
        def render(row: tuple[str, RouteLike]) -> str:
            return line(name, f'service="{escape_value(row[0])}"', len(members(row[1])))

        return chunked(list(self._services().items()), render)

    def describe(self) -> Iterator[Metric]:
        """No fixed description (one series per registered service)."""
        return iter(())
