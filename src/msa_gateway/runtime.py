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
from collections.abc import Mapping
from types import MappingProxyType

from msa_gateway import __version__
from msa_gateway.discovery.aggregator import Aggregator
from msa_gateway.discovery.base import Provider, Registrar
from msa_gateway.discovery.providers import create_provider, create_registrar
from msa_gateway.discovery.static import StaticProvider
from msa_gateway.health.active import ActiveHealthChecker, ProbeTarget
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
from msa_gateway.registry.snapshot import EMPTY, ServiceRoute, Snapshot
from msa_gateway.reload import ConfigReloader
from msa_gateway.routing.table import build_table
from msa_gateway.settings import GatewayConfig, Settings, validate_service_name
from msa_gateway.tasks import Factory, Supervised, Supervisor

log = logging.getLogger("msa_gateway.registry")


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
        self.upstream: UpstreamClient = upstream or create_client(settings.upstream_client, self.tasks)
        self.snapshot: Snapshot = EMPTY
        self.provider = provider or create_provider(settings, config, self.tasks)
        self.registrar: Registrar | None = None
        grace, grace_max = settings.discovery_recovery_grace, settings.discovery_recovery_grace_max
        recovery = RecoveryConfig(grace, maximum=grace_max)
        self.aggregator = Aggregator(self.provider, self.apply, self.metrics, recovery=recovery)
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
            extra={"discovery": self.provider.name, "config": self.config.source, "version": self.version},
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
        """Build a snapshot from ``discovered`` and swap it in: the one place that swaps."""
        self.discovered = discovered
        config = self.config
        specs: dict[str, ServiceSpec] = {}
        for name, instances in sorted(discovered.items()):
            why = validate_service_name(name)
            if why:
                log.warning("skipping service with an unusable name", extra={"service": name, "reason": why})
                continue
            options = config.options_for(name)
            specs[name] = ServiceSpec(
                name=name, instances=tuple(instances), options=options, shared=self.shared
            )
        old = self.snapshot
        routes = {
            name: ServiceRoute(spec, self.metrics, self.health, self._guard(spec))
            for name, spec in specs.items()
        }
        for name in [n for n in self.guards if n not in routes]:
            self._forget_guard(name)
        now = time.time()
        seen = {key: now for route in routes.values() for key in route.keys}
        new = Snapshot(
            version=old.version + 1,
            services=MappingProxyType(routes),
            created=now,
            seen=MappingProxyType(seen),
            routes=build_table(config, routes, self.metrics.route_split) if config.routes else None,
            trusted_proxies=config.trusted_proxies,
        )
        self.snapshot = new
        self._after_swap(old, new)

    def _guard(self, spec: ServiceSpec) -> ServiceGuard:
        """Return the service's guard: one per service for as long as it exists, updated in place."""
        keys = [instance_key(spec.name, i.id, i.address) for i in spec.instances]
        guard = self.guards.get(spec.name)
        if guard is None:
            guard = self.guards[spec.name] = ServiceGuard(spec.options, keys)
        else:
            guard.update(spec.options, keys)
        return guard

    def _forget_guard(self, name: str) -> None:
        guard = self.guards.pop(name)
        if guard.in_panic:
            log.warning("service left panic mode: it is no longer registered", extra={"service": name})
        with contextlib.suppress(KeyError):
            self.metrics.panic.remove(name)

    def _after_swap(self, old: Snapshot, new: Snapshot) -> None:
        old_keys = {k for r in old.services.values() for k in r.keys}
        new_keys = {k for r in new.services.values() for k in r.keys}
        added, removed = sorted(new_keys - old_keys), sorted(old_keys - new_keys)
        log.info(
            "registry updated",
            extra={
                "version": new.version,
                "services": len(new.services),
                "instances": new.instance_count,
                "added": added,
                "removed": removed,
            },
        )
        self.metrics.registry_swaps.inc()
        self.metrics.registry_services.set(len(new.services))
        self.metrics.registry_instances.set(new.instance_count)
        self.health.retain(new_keys)
        self.upstream.retain({i.address for r in new.services.values() for i in r.instances})
        for route in old.services.values():
            for inst, key in zip(route.instances, route.keys, strict=True):
                if key in removed:
                    with contextlib.suppress(KeyError):
                        self.metrics.instance_up.remove(route.name, inst.address)
        targets: dict[str, ProbeTarget] = {}
        for route in new.services.values():
            check = route.spec.options.health_check
            for inst, key in zip(route.instances, route.keys, strict=True):
                path = inst.health_path or check.path
                up = 1 if self.health.is_eligible(key) else 0
                self.metrics.instance_up.labels(route.name, inst.address).set(up)
                if path is not None:
                    targets[key] = ProbeTarget(route.name, key, inst, path, check)
        self.checker.reconcile(targets)
        for route in new.services.values():
            note_panic(self.metrics, route, route.panic_now())

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
        for inst, k in zip(route.instances, route.keys, strict=True):
            if k == key:
                self.metrics.instance_up.labels(service, inst.address).set(1 if state.eligible else 0)

    # --- request path helpers --------------------------------------------------------

    def count_unknown(self, method: str, code: int) -> None:
        """Count a request that matched no service (label ``service="unknown"``)."""
        self.metrics.requests.count(UNKNOWN_SERVICE, method, code)

    def instances_of(self, service: str) -> Mapping[str, Instance]:
        """Return the instances of ``service`` by health key (empty when unknown)."""
        route = self.snapshot.services.get(service)
        return dict(zip(route.keys, route.instances, strict=True)) if route else {}
