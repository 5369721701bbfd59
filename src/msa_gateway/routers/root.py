"""``GET /``: what this gateway is and how it is doing."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from msa_gateway.routers.deps import runtime_of

router = APIRouter(tags=["gateway"])


@router.get("/", summary="Gateway name, version, uptime, discovery type and service count")
async def index(request: Request) -> dict[str, Any]:
    """Describe the gateway."""
    rt = runtime_of(request)
    return {
        "name": "msa-gateway",
        "version": rt.version,
        "uptime_seconds": round(time.time() - rt.started_at, 3),
        "discovery": rt.settings.service_discovery_type,
        "services": len(rt.snapshot.services),
        "ready": rt.ready,
    }
