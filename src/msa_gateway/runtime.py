"""The runtime: the one object that owns clients, tables, tasks and the current snapshot.

Built in the lifespan, started before the first request and closed in order at shutdown
(discovery, then probes, then pools). Nothing else holds mutable state.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import Counter
from collections.abc import Callable, Generator, Mapping

from msa_gateway import __version__
from msa_gateway.compiled import compiled_modules, listed
from msa_gateway.discovery.aggregator import Aggregator
from msa_gateway.discovery.base import Provider, Registrar
from msa_gateway.discovery.providers import create_provider, create_registrar
from msa_gateway.discovery.static import StaticProvider
from msa_gateway.health.active import ActiveHealthChecker
from msa_gateway.health.hints import start_hints
from msa_gateway.health.lag import LoopLag
from msa_gateway.health.probe_stats import ProbeStats
from msa_gateway.health.sync import EjectionSync
from msa_gateway.health.table import HealthState, HealthTable, instance_key
from msa_gateway.model import Discovered, Instance, ProbeLimits, RecoveryConfig, ServiceSpec
from msa_gateway.observability.access import AccessLog
from msa_gateway.observability.feed import LiveFeed
from msa_gateway.observability.metrics import UNKNOWN_SERVICE, Metrics
from msa_gateway.observability.otlp import tracing_from_settings
from msa_gateway.policies.shared import SharedState
from msa_gateway.proxy.forwarder import note_panic
from msa_gateway.proxy.resilience import ServiceGuard
from msa_gateway.proxy.upstream import UpstreamClient, create_client
from msa_gateway.proxy.websocket import WebSockets
from msa_gateway.registry.snapshot import EMPTY, Snapshot
from msa_gateway.registry.swap import SLICE, swap_steps
from msa_gateway.reload import ConfigReloader
from msa_gateway.settings import GatewayConfig, Settings
from msa_gateway.tasks import Factory, Supervised, Supervisor
from msa_gateway.write_batch import WriteBatch

log = logging.getLogger("msa_gateway.registry")

FREEZE_AFTER = 2000  # update steps (about one per rebuilt instance) between two gc.freeze()


class Runtime:
    """Everything the gateway holds while it runs."""

    def __init__(
        self,
        settings: Settings,
        config: GatewayConfig,
        *,
        provider: Provider | None = None,
        access: AccessLog | None = None,
        upstream: UpstreamClient | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.version = __version__
        self.started_at = time.time()
        self.tasks = Supervisor()
        self.metrics = Metrics(per_instance=settings.metrics_per_instance)
        self.metrics.track_tasks(self.tasks)
        self.metrics.track_services(lambda: self.snapshot.services)
        self.access = access or AccessLog(console=settings.debug)
        self.tracer, self.exporter = tracing_from_settings(settings)
        self.metrics.track_exporter(self.exporter)
        self.health = HealthTable()
        self.health.set_listener(self._on_health_change)
        self.lag = LoopLag()  # the event loop's own lateness: probes it spoiled are not counted
        limits = ProbeLimits(
            settings.health_probe_concurrency,
            settings.health_probe_cpu_budget,
            settings.health_probe_lag_fraction,
        )
        self.checker = ActiveHealthChecker(self.health, tasks=self.tasks, limits=limits, lag=self.lag)
        self.metrics.registry.register(ProbeStats(lambda: self.checker.scheduler, self.lag))
        # the proxy's socket writes, sent together at the end of each loop turn under load
        self.writes = WriteBatch(self.metrics.requests)
        self.upstream: UpstreamClient = upstream or create_client(
            settings.upstream_client, self.tasks, self.writes
        )
        self.snapshot: Snapshot = EMPTY
        self.built_with: GatewayConfig | None = None  # the config the snapshot was built with
        self.addresses: Counter[str] = Counter()  # instances per upstream address, to close unused pools
        self._steps: Generator[None, None, None] | None = None  # an update in progress
        self._unfrozen = 0  # update steps since the last gc.freeze()
        self.provider = provider or create_provider(settings, config, self.tasks)
        self.registrar: Registrar | None = None
        grace, grace_max = settings.discovery_recovery_grace, settings.discovery_recovery_grace_max
        recovery = RecoveryConfig(grace, maximum=grace_max)
        self.aggregator = Aggregator(
            self.provider, self.apply, self.metrics, recovery=recovery, update=self.update
        )
        self.discovered: Discovered | None = None  # the last set applied, rebuilt on a config reload
        self.reloader = ConfigReloader(self)
        self.draining = False
        self.websockets = WebSockets(self.metrics.websocket_connections)
        self._discovery: Supervised | None = None
        self.guards: dict[str, ServiceGuard] = {}
        # policy state that outlives snapshots (JWKS caches, rate-limit buckets and their Redis client)
        self.shared = SharedState(self.tasks, settings=settings, metrics=self.metrics)
        self.sync = EjectionSync(self.guards)  # ejections to/from other workers and replicas
        self.worker: int | None = None  # the worker index under ``--workers N``
        self.live = LiveFeed(self)  # the dashboard's event stream (idle until someone subscribes)

    # --- lifecycle ---------------------------------------------------------------------

    def spawn(
        self, kind: str, factory: Factory, *, key: str | None = None, restart: bool = True
    ) -> Supervised:
        """Start a named background task the runtime owns, restarts after a crash and stops at shutdown."""
        return self.tasks.spawn(kind, factory, key=key, restart=restart)

    async def start(self) -> None:
        """Start discovery (probes start as snapshots arrive)."""
        self.registrar = create_registrar(self.settings)
        self._discovery = self.spawn("discovery", self.aggregator.run, key=self.provider.name)
        self.spawn("loop_lag", self.lag.run)
        self.spawn("gc_freeze", self._freeze_when_loaded, restart=False)
        if self.exporter is not None:
            self.spawn("trace_export", self.exporter.run)
        self.reloader.start()
        start_hints(self)
        if self.sync.sinks:
            self.spawn("ejection_sync", self.sync.run)
        log.info(
            "gateway starting",
            extra={
                "discovery": self.provider.name,
                "config": self.config.source,
                "version": self.version,
                "compiled": f"{len(compiled_modules())}/{len(listed())}",  # request-path modules (mypyc)
                "busy_poll_us": self.settings.busy_poll_us,  # 0: the loop sleeps when idle
            },
        )

    async def _freeze_when_loaded(self) -> None:
        """Once the first registry is in, exempt what start-up built from garbage collection.

        With 20,000 instances a full collection walks a million objects (0.1-1 s with the loop
        stopped), and probe traffic triggers one every few seconds; frozen objects are skipped.
        """
        await self.aggregator.loaded.wait()
        gc.freeze()

    async def wait_loaded(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the first snapshot; return whether it came."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.aggregator.loaded.wait(), timeout)
        return self.aggregator.loaded.is_set()

    async def aclose(self) -> None:
        """Stop discovery, then probes, then close pools and clients, then any task left, in that order."""
        self.reloader.stop()
        if self._discovery is not None:
            await self._discovery.stop()
        with contextlib.suppress(Exception):
            await self.provider.aclose()
        if self.registrar is not None:
            with contextlib.suppress(Exception):
                await self.registrar.aclose()
        await self.checker.aclose()
        await self.upstream.aclose()
        await self.tasks.aclose()
        await self.shared.aclose()
        if self.exporter is not None:
            with contextlib.suppress(Exception):
                await self.exporter.aclose()
        self.access.flush()

    # --- snapshots -------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Return whether a registry snapshot has loaded and the gateway is not draining."""
        return self.aggregator.loaded.is_set() and not self.draining

    def reconfigure(self, config: GatewayConfig) -> None:
        """Make ``config`` the running config and rebuild the snapshot from the services discovered so far."""
        self.config = config
        if isinstance(self.provider, StaticProvider):
            self.provider.reconfigure(config)
            self.discovered = self.provider.services()
        if self.discovered is not None:
            self.apply(self.discovered)

    def apply(self, discovered: Discovered) -> None:
        """Bring the snapshot in line with ``discovered`` at once: the synchronous path (tests, reloads).

        An update still in progress (``update``) is finished first, so swaps never interleave.
        """
        self._finish()
        self.discovered = discovered
        for _ in swap_steps(self, discovered):
            pass

    async def update(self, discovered: Discovered, swapped: Callable[[], None] | None = None) -> None:
        """Bring the snapshot in line with ``discovered``, pausing every ``SLICE`` seconds of work.

        The aggregator's path: only changed services are rebuilt, and a large change (a full
        snapshot replacing every instance) gives the event loop a turn every few ms. ``swapped``
        is called as soon as the new snapshot routes requests (the gateway is ready from then),
        before the follow-up work on metrics and probes ends.
        """
        self._finish()
        self.discovered = discovered
        steps = self._steps = swap_steps(self, discovered)
        started = time.perf_counter()
        count = 0
        before = self.snapshot
        for _ in steps:  # ends at once if ``apply`` finished them while we paused
            count += 1
            if swapped is not None and self.snapshot is not before:
                swapped()
                swapped = None
            if time.perf_counter() - started >= SLICE:
                await asyncio.sleep(0)
                started = time.perf_counter()
        if self._steps is steps:
            self._steps = None
        self._unfrozen += count
        if self._unfrozen >= FREEZE_AFTER:
            # Much of the registry was rebuilt (at once or over many updates) and will live on:
            # keep it out of the collector's full passes (as start-up does), which otherwise
            # walk it all and stall the loop for tens of ms at 20,000 instances.
            self._unfrozen = 0
            gc.collect(1)
            gc.freeze()

    @property
    def updating(self) -> bool:
        """Return whether an update is still being applied (its follow-up included)."""
        return self._steps is not None

    def _finish(self) -> None:
        steps, self._steps = self._steps, None
        if steps is not None:
            for _ in steps:
                pass

    def guard_for(self, spec: ServiceSpec) -> ServiceGuard:
        """Return the service's guard: one per service for as long as it exists, updated in place."""
        keys = [instance_key(spec.name, i.id, i.address) for i in spec.instances]
        guard = self.guards.get(spec.name)
        if guard is None:
            guard = self.guards[spec.name] = ServiceGuard(spec.options, keys)
        else:
            guard.update(spec.options, keys)
        return guard

    def forget_guard(self, name: str) -> None:
        """Drop the guard of a service that left the registry."""
        guard = self.guards.pop(name)
        if guard.in_panic:
            log.warning("service left panic mode: it is no longer registered", extra={"service": name})
        with contextlib.suppress(KeyError):
            self.metrics.panic.remove(name)

    def _on_health_change(self, service: str, key: str, state: HealthState) -> None:
        route = self.snapshot.services.get(service)
        if route is None:
            return
        if state.status == "healthy" and route.guard.outlier.active_probe_passed(key, time.monotonic()):
            log.info("ejected instance returns: its active health check recovered", extra={"instance": key})
        if state.eligible == (state.previous != "unhealthy"):
            return  # unknown -> healthy: eligible before and after (20,000 of them on the first round)
        route.refresh(self.health)
        note_panic(self.metrics, route, route.panic_now())
        if key in route.key_set:
            inst = route.instances[route.keys.index(key)]
            self.metrics.instance_up.labels(service, inst.address).set(1 if state.eligible else 0)

    # --- request path helpers --------------------------------------------------------

    def count_unknown(self, method: str, code: int) -> None:
        """Count a request that matched no service (label ``service="unknown"``)."""
        self.metrics.requests.count(UNKNOWN_SERVICE, method, code)

    def instances_of(self, service: str) -> Mapping[str, Instance]:
        """Return the instances of ``service`` by health key (empty when unknown)."""
        route = self.snapshot.services.get(service)
        return dict(zip(route.keys, route.instances, strict=True)) if route else {}
