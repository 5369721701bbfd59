"""The proxy's forwarding side: one ``Forwarder`` per runtime runs each request's attempts.

It holds what every request's attempts share (the upstream client, metrics, tracing) and the
reporting that outlives one request: passive health results and ejections, panic mode and
instances taken out of rotation for being slow, each logged once when it changes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from msa_gateway.health import outlier
from msa_gateway.proxy.attempts import Attempts, Body
from msa_gateway.proxy.upstream import UpstreamClient

if TYPE_CHECKING:
    from msa_gateway.observability.metrics import Metrics
    from msa_gateway.observability.otlp import Exporter
    from msa_gateway.observability.tracing import Tracer
    from msa_gateway.proxy.exchange import Exchange
    from msa_gateway.proxy.lease import Lease, Outcome
    from msa_gateway.proxy.request import ProxyRequest
    from msa_gateway.registry.snapshot import ServiceRoute

log = logging.getLogger("msa_gateway.proxy")


class Forwarder:
    """Forwards requests for the proxy: one per runtime, no state of its own per request."""

    __slots__ = ("allow_underscores", "exporter", "metrics", "tracer", "upstream")

    def __init__(
        self,
        upstream: UpstreamClient,
        metrics: Metrics,
        *,
        allow_underscores: bool = False,
        tracing: tuple[Tracer | None, Exporter | None] = (None, None),
    ) -> None:
        self.upstream = upstream
        self.metrics = metrics
        self.allow_underscores = allow_underscores
        self.tracer, self.exporter = tracing

    def forward(
        self, route: ServiceRoute, req: ProxyRequest, ex: Exchange, body: Body
    ) -> Coroutine[Any, Any, Outcome]:
        """Return the run of ``req``'s attempts against ``route``'s instances (one coroutine, not two)."""
        return Attempts(self, route, req, ex, body).run()

    def report(self, route: ServiceRoute, lease: Lease, result: outlier.Outcome) -> None:
        """Feed one attempt's result to the passive health check; log an ejection."""
        ejection = route.guard.outlier.report(lease.key, result, time.monotonic())
        if ejection is not None:
            self.metrics.ejections.labels(route.name, lease.instance.address).inc()
            log.warning(
                "instance ejected by passive health check",
                extra={
                    "service": route.name,
                    "instance": lease.key,
                    "seconds": ejection.duration,
                    "consecutive_failures": ejection.consecutive_failures,
                },
            )

    def panic_changed(self, route: ServiceRoute, panic: bool) -> None:
        """Log and export the panic state ``route.guard.set_panic`` just changed."""
        panic_changed(self.metrics, route, panic)

    def note_slow(self, route: ServiceRoute, keys: frozenset[str]) -> None:
        """Log and count instances just taken out of rotation for keeping requests waiting."""
        route.guard.newly_slow = frozenset()
        for key in sorted(keys):
            self.metrics.slow_ejections.labels(route.name).inc()
            log.warning(
                "instance taken out of rotation: requests wait on it without an answer",
                extra={"service": route.name, "instance": key, "waiting": route.guard.waits.waiting(key)},
            )


def note_panic(metrics: Metrics, route: ServiceRoute, panic: bool) -> None:
    """Record a service's panic state on its guard; log and export it when it changes."""
    if route.guard.set_panic(panic):
        panic_changed(metrics, route, panic)


def panic_changed(metrics: Metrics, route: ServiceRoute, panic: bool) -> None:
    """Log and export a service's new panic state."""
    metrics.panic.labels(route.name).set(1 if panic else 0)
    log.warning(
        "service in panic mode: balancing over all instances" if panic else "service left panic mode",
        extra={"service": route.name},
    )
