"""Shared lookups for the routers: the runtime and the request id."""

from __future__ import annotations

from typing import cast

from fastapi import HTTPException, Request

from msa_gateway.proxy.headers import request_id_from
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


def request_id_of(request: Request) -> str:
    """Return this request's id: the client's when safe, else a new one (the same for the whole request)."""
    rid: str | None = getattr(request.state, "request_id", None)
    if rid is None:
        given = request.headers.get("x-request-id")
        rid = request.state.request_id = request_id_from(given.encode("latin-1") if given else None)
    return rid
