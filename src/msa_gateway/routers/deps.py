"""Shared lookups for the routers: the runtime and the request id."""

from __future__ import annotations

from typing import cast

from fastapi import HTTPException, Request

from msa_gateway.registry.snapshot import ServiceRoute
from msa_gateway.runtime import Runtime


def runtime_of(request: Request) -> Runtime:
    """Return the runtime the lifespan built."""
    return cast(Runtime, request.app.state.runtime)


def route_of(request: Request, name: str) -> ServiceRoute:
    """Return the current data plane of service ``name``; 404 when unknown."""
    route = runtime_of(request).snapshot.services.get(name)
    if route is None:
        raise HTTPException(status_code=404, detail=f"no service is registered under {name!r}")
    return route
