"""``/metrics/`` and ``/metrics``: Prometheus text, or OpenMetrics when the scraper asks for it.

The body streams out a slice at a time (``observability/exposition.py``), so a large exposition
never holds the event loop, and proxied requests, for long.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from msa_gateway.observability.exposition import content_type, wants_openmetrics
from msa_gateway.routers.deps import runtime_of

router = APIRouter(tags=["metrics"])


@router.get("/metrics/", summary="Prometheus metrics")
@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> StreamingResponse:
    """Return every gateway metric: OpenMetrics (with exemplars) when ``Accept`` asks for it, else text."""
    openmetrics = wants_openmetrics(request.headers.get("accept"))
    body = runtime_of(request).metrics.scrape(openmetrics)
    return StreamingResponse(body, media_type=content_type(openmetrics))
