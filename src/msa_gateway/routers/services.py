"""``/services``, ``/services/{name}/health``, ``/services/{name}/info``."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request

from msa_gateway.health.active import ProbeResult
from msa_gateway.model import Instance
from msa_gateway.registry.snapshot import ServiceRoute
from msa_gateway.routers.deps import route_of, runtime_of
from msa_gateway.runtime import Runtime

router = APIRouter(prefix="/services", tags=["services"])
PROBE_ROUND_TTL = 1.0  # seconds a probe round of /services/{name}/health is reused
MAX_ROUNDS = 1024  # past this many remembered rounds, expired ones are dropped


def _instance(rt: Runtime, route: ServiceRoute, inst: Instance, key: str) -> dict[str, Any]:
    state = rt.health.get(key)
    return {
        "id": inst.id,
        "address": inst.address,
        "host": inst.host,
        "port": inst.port,
        "weight": inst.weight,
        "source": inst.source,
        "metadata": dict(inst.metadata),
        "health": {
            "status": state.status,
            "eligible": state.eligible,
            "last_checked": state.last_checked,
            "last_latency_ms": None if state.last_latency_ms is None else round(state.last_latency_ms, 3),
            "last_error": state.last_error,
            "since": state.since,
        },
        "last_seen": rt.snapshot.seen.get(key),
    }


def _service(rt: Runtime, route: ServiceRoute) -> dict[str, Any]:
    return {
        "name": route.name,
        "healthy_instances": len(route.eligible),
        "total_instances": len(route.instances),
        "instances": [_instance(rt, route, i, k) for i, k in zip(route.instances, route.keys, strict=True)],
    }


@router.get("", summary="Every service with its instances and their health")
@router.get("/", include_in_schema=False)
async def list_services(request: Request) -> dict[str, Any]:
    """List services, instances and health."""
    rt = runtime_of(request)
    return {
        "registry_version": rt.snapshot.version,
        "discovery": rt.provider.name,
        "services": {name: _service(rt, route) for name, route in rt.snapshot.services.items()},
    }


class ProbeRounds:
    """At most one probe round per service per ``ttl`` seconds; concurrent callers share it.

    ``/services/{name}/health`` probes every instance on demand; without this, any client could
    make the gateway send a request to every instance per request it receives (an amplifier).
    """

    def __init__(self, ttl: float = PROBE_ROUND_TTL) -> None:
        self.ttl = ttl
        # service -> (monotonic start, registry version, wall-clock start, the round's results)
        self._rounds: dict[str, tuple[float, int, float, asyncio.Future[list[ProbeResult]]]] = {}

    async def get(self, rt: Runtime, route: ServiceRoute) -> tuple[float, list[ProbeResult]]:
        """Return when the round began (wall clock) and its results: a recent round's, or a new one's."""
        now = time.monotonic()
        version = rt.snapshot.version
        entry = self._rounds.get(route.name)
        if entry is None or now - entry[0] >= self.ttl or entry[1] != version:
            if len(self._rounds) > MAX_ROUNDS:
                self._rounds = {k: v for k, v in self._rounds.items() if now - v[0] < self.ttl}
            check = route.options.health_check
            probes = [
                rt.checker.probe(i, i.health_path or check.path or "/", check.timeout)
                for i in route.instances
            ]
            entry = (now, version, time.time(), asyncio.gather(*probes))
            self._rounds[route.name] = entry
        results = await asyncio.shield(entry[3])
        return entry[2], results


@router.get("/{name}/health", summary="Probe every instance of a service (at most once a second)")
async def service_health(request: Request, name: str) -> dict[str, Any]:
    """Probe each instance of ``name`` (or reuse a round under a second old); report status and latency."""
    rt = runtime_of(request)
    route = route_of(request, name)
    rounds: ProbeRounds = request.app.state.probe_rounds
    checked_at, outcomes = await rounds.get(rt, route)
    results = []
    now = time.monotonic()
    outlier = route.guard.outlier.snapshot(now)
    for inst, key, res in zip(route.instances, route.keys, outcomes, strict=True):
        passive = outlier.get(key)
        results.append(
            {
                "id": inst.id,
                "address": inst.address,
                "status": "healthy" if res.ok else "unhealthy",
                "http_status": res.status,
                "latency_ms": round(res.latency_ms, 3),
                "error": res.error,
                "in_rotation": rt.health.is_eligible(key) and not (passive is not None and passive.ejected),
                "ejected": passive is not None and passive.ejected,
                "ejected_for_seconds": round(passive.remaining, 3)
                if passive is not None and passive.ejected
                else 0,
                "consecutive_failures": passive.consecutive_failures if passive is not None else 0,
                "ejections": passive.ejections if passive is not None else 0,
            }
        )
    healthy = sum(1 for r in results if r["status"] == "healthy")
    return {
        "service": name,
        "status": "healthy"
        if healthy == len(results) and results
        else ("degraded" if healthy else "unhealthy"),
        "healthy_instances": healthy,
        "total_instances": len(results),
        "checked_at": checked_at,
        "instances": results,
    }


@router.get("/{name}/info", summary="Instances, weights, balancer, timeouts and counters of a service")
async def service_info(request: Request, name: str) -> dict[str, Any]:
    """Describe how the gateway routes to ``name``."""
    rt = runtime_of(request)
    route = route_of(request, name)
    options = route.options
    counts = rt.metrics.requests.by_code(name)
    return {
        **_service(rt, route),
        "balancer": route.balancer.name,
        "options": asdict(options),
        "panic": route.guard.in_panic,
        "state": route.guard.describe(),
        "requests_by_code": counts,
        "registry_version": rt.snapshot.version,
    }
