"""``/health/``, ``/health/ready``, ``/health/live``: the gateway's own health."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from msa_gateway.routers.deps import runtime_of

router = APIRouter(prefix="/health", tags=["health"])


def _summary(request: Request) -> dict[str, Any]:
    rt = runtime_of(request)
    services = {}
    for name, route in rt.snapshot.services.items():
        healthy = len(route.eligible)
        total = len(route.instances)
        services[name] = {
            "status": "healthy" if healthy == total and total else ("degraded" if healthy else "unavailable"),
            "healthy_instances": healthy,
            "total_instances": total,
        }
    agg = rt.aggregator
    tasks = rt.tasks.summary()
    unhealthy = any(s["status"] != "healthy" for s in services.values())
    degraded = unhealthy or not agg.up or agg.recovery is not None or bool(tasks["failing"])
    return {
        "status": "degraded" if degraded else "healthy",
        "ready": rt.ready,
        "uptime_seconds": round(time.time() - rt.started_at, 3),
        "discovery": {
            "provider": rt.provider.name,
            "up": agg.up,
            "last_success": agg.last_success,
            "last_error": agg.last_error if not agg.up else None,
            "registry_version": rt.snapshot.version,
            "outages": agg.outages,
            "recovering": agg.describe(),
        },
        "services": services,
        "config": rt.reloader.summary(),
        "tasks": tasks,
    }


@router.get("/", summary="Gateway health with a per-service summary")
@router.get("", include_in_schema=False)
async def health(request: Request) -> dict[str, Any]:
    """Report the gateway's health and a summary per service (200 while the process serves)."""
    return _summary(request)


@router.get("/live", summary="Liveness: 200 while the process answers")
async def live() -> dict[str, str]:
    """Answer 200 while the event loop runs."""
    return {"status": "alive"}


@router.get("/ready", summary="Readiness: 503 until the registry has loaded, and while draining")
async def ready(request: Request) -> JSONResponse:
    """Answer 200 once a registry snapshot has loaded; 503 with the reason before that."""
    rt = runtime_of(request)
    if rt.ready:
        return JSONResponse({"status": "ready", "registry_version": rt.snapshot.version})
    if rt.draining:
        reason = "shutting down"
    elif rt.aggregator.last_error:
        reason = f"registry not loaded: {rt.aggregator.last_error}"
    else:
        reason = "registry not loaded yet"
    return JSONResponse(
        {"status": "not_ready", "reason": reason}, status_code=503, headers={"retry-after": "1"}
    )
