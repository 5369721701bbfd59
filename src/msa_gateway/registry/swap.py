"""Swapping a discovered set in: rebuild only the services that changed, in slices.

``swap_steps`` is a generator; each ``yield`` is a point where the event loop may run other
work. ``Runtime.apply`` drives it to the end at once (tests, config reloads); ``Runtime.update``
(the aggregator's path) pauses at a yield once the current slice has run ``SLICE`` seconds, so
a full snapshot replacing 20,000 instances never blocks the loop more than a few ms at a time.

Three phases: find the services whose instances or options changed (an identity test each,
see ``diff.py``), build a ``ServiceRoute`` for each of them, then swap in a new ``Snapshot``
in one assignment: a copy of the old services mapping with the rebuilt routes put in and the
removed ones taken out, so unchanged services keep their route objects. The follow-up (log
line, metrics, probes, pooled connections, panic state) then touches only what changed. A set
that changes nothing swaps nothing.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Generator
from types import MappingProxyType
from typing import TYPE_CHECKING

from msa_gateway.health.active import ProbeTarget
from msa_gateway.model import Discovered, Instance, ServiceOptions, ServiceSpec
from msa_gateway.proxy.forwarder import note_panic
from msa_gateway.registry.diff import LOG_IDS, KeyChanges, needs_rebuild, removed_services
from msa_gateway.registry.snapshot import ServiceRoute, Snapshot, build_route
from msa_gateway.routing.table import build_table
from msa_gateway.settings import validate_service_name

if TYPE_CHECKING:
    from msa_gateway.runtime import Runtime

log = logging.getLogger("msa_gateway.registry")

SLICE = 0.002  # seconds of work between two pauses of an update


def swap_steps(rt: Runtime, discovered: Discovered) -> Generator[None, None, None]:
    """Bring ``rt.snapshot`` in line with ``discovered`` and ``rt.config``; yield between pieces of work.

    Requests route by the new snapshot from the step that assigns ``rt.snapshot`` on, while the
    follow-up (metrics, probes) goes on.
    """
    config = rt.config
    old = rt.snapshot
    current = old.services
    rebuild: list[tuple[str, tuple[Instance, ...], ServiceOptions]] = []
    for name, instances in discovered.items():
        route = current.get(name)
        options = config.options_for(name)
        if needs_rebuild(route.spec if route is not None else None, instances, options):
            why = validate_service_name(name) if route is None else None
            if why:
                log.warning("skipping service with an unusable name", extra={"service": name, "reason": why})
            else:
                rebuild.append((name, tuple(instances), options))
        yield
    removed = removed_services(current, discovered)
    if not rebuild and not removed and rt.built_with is config and old.version:
        return  # nothing changed: keep the snapshot (and its version)
    built: dict[str, ServiceRoute] = {}
    for name, instances, options in rebuild:
        spec = ServiceSpec(name=name, instances=instances, options=options, shared=rt.shared)
        built[name] = build_route(spec, rt.metrics, rt.health, rt.guard_for(spec))
        yield
    pairs = [(current.get(name), built.get(name)) for name in (*removed, *built)]
    new = _swap(rt, old, built, removed, [before for before, _ in pairs if before is not None])
    del old, current, built, rebuild, discovered  # the old routes live on in ``pairs`` only
    yield
    yield from _follow_up(rt, pairs, new)


def _swap(
    rt: Runtime,
    old: Snapshot,
    built: dict[str, ServiceRoute],
    removed: list[str],
    replaced: list[ServiceRoute],
) -> Snapshot:
    """Swap in the new snapshot (one assignment) and drop the guards of removed services."""
    config = rt.config
    services = dict(old.services)
    for name in removed:
        del services[name]
    services.update(built)
    count = old.instance_count + sum(len(r.instances) for r in built.values())
    count -= sum(len(r.instances) for r in replaced)
    table = None
    if config.routes:
        for route in services.values():
            if route.variants:
                route.variants = []  # the old table's views go with the old table
        table = build_table(config, services, rt.metrics.route_split)
    new = Snapshot(
        version=old.version + 1,
        services=MappingProxyType(services),
        created=time.time(),
        routes=table,
        trusted_proxies=config.trusted_proxies,
        instance_count=count,
    )
    rt.snapshot = new
    rt.built_with = config
    for name in removed:
        rt.forget_guard(name)
    return new


def _follow_up(
    rt: Runtime, pairs: list[tuple[ServiceRoute | None, ServiceRoute | None]], new: Snapshot
) -> Generator[None, None, None]:
    """Update health, metrics, pools, probes and panic state service by service, then log the swap.

    ``pairs`` holds (old route, new route) of every rebuilt or removed service; each old route
    is dropped once handled, so freeing a replaced registry is spread over the slices too.
    """
    metrics = rt.metrics
    added: list[str] = []
    gone: list[str] = []
    added_count = gone_count = 0
    released: list[str] = []
    for n, (before, after) in enumerate(pairs):
        pairs[n] = (None, None)
        changes = KeyChanges.between(before.keys if before else (), after.keys if after else ())
        added_count += len(changes.added)
        gone_count += len(changes.removed)
        added.extend(changes.added[: LOG_IDS - len(added)])
        gone.extend(changes.removed[: LOG_IDS - len(gone)])
        rt.health.forget(changes.removed)
        probed: set[str] = set()
        if after is not None:
            yield from _start(rt, after, probed)
        if before is not None:
            rt.addresses.subtract(i.address for i in before.instances)
            released.extend(i.address for i in before.instances)
            removed = frozenset(changes.removed)
            for inst, key in zip(before.instances, before.keys, strict=True):
                if key in removed:
                    with contextlib.suppress(KeyError):
                        metrics.instance_up.remove(before.name, inst.address)
            rt.checker.update({}, [k for k in before.keys if k not in probed])
        del before, after
        yield
    unused = sorted({a for a in released if rt.addresses[a] <= 0})
    for address in unused:
        del rt.addresses[address]
    if unused:
        rt.upstream.release(unused)
    metrics.registry_swaps.inc()
    metrics.registry_services.set(len(new.services))
    metrics.registry_instances.set(new.instance_count)
    log.info(
        "registry updated",
        extra={
            "version": new.version,
            "services": len(new.services),
            "instances": new.instance_count,
            "services_changed": len(pairs),
            "added": {"count": added_count, "first": added},
            "removed": {"count": gone_count, "first": gone},
        },
    )


def _start(rt: Runtime, route: ServiceRoute, probed: set[str]) -> Generator[None, None, None]:
    """Export the new route's instances, start their probes (adding their keys to ``probed``)."""
    metrics = rt.metrics
    check = route.options.health_check
    rt.addresses.update(i.address for i in route.instances)
    targets: dict[str, ProbeTarget] = {}
    for inst, key in zip(route.instances, route.keys, strict=True):
        metrics.instance_up.labels(route.name, inst.address).set(1 if rt.health.is_eligible(key) else 0)
        path = inst.health_path or check.path
        if path is not None:
            targets[key] = ProbeTarget(route.name, key, inst, path, check)
        yield
    rt.checker.update(targets, ())  # one call per service: the checker spreads what is new
    probed.update(targets)
    note_panic(metrics, route, route.panic_now())
