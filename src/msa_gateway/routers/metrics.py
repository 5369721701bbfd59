"""``/metrics/`` and ``/metrics``: Prometheus text exposition."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from msa_gateway.routers.deps import runtime_of

router = APIRouter(tags=["metrics"])


@router.get("/metrics/", summary="Prometheus metrics")
@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Return every gateway metric in the Prometheus text format."""
    body, content_type = await runtime_of(request).metrics.scrape()
    return Response(content=body, media_type=content_type)
