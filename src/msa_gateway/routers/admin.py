"""Admin endpoints that register and remove instances through the active provider's registrar.

Off (404) unless ``GATEWAY_ADMIN_TOKEN`` is set; then every call needs
``Authorization: Bearer <token>`` (401 otherwise). ``ttl`` omitted means the entry never
expires; remove it with ``DELETE``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from msa_gateway.discovery.base import Registrar
from msa_gateway.discovery.redis_registry import MAX_TTL, check_instance, default_id
from msa_gateway.errors import DiscoveryError, error_response
from msa_gateway.listeners import bearer_ok
from msa_gateway.model import Instance
from msa_gateway.routers.deps import request_id_of
from msa_gateway.settings import validate_service_name

router = APIRouter()


class InstanceBody(BaseModel):
    """The JSON body of ``POST /services/{name}/instances``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: Annotated[str, Field(min_length=1, max_length=253)]
    port: Annotated[int, Field(ge=1, le=65535, strict=True)]
    id: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    weight: Annotated[int, Field(ge=1, le=1000, strict=True)] = 1
    ttl: Annotated[float, Field(gt=0, le=MAX_TTL)] | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    health_path: str | None = None


def _error(request: Request, status: int, error: str, detail: str, **headers: str) -> Response:
    return error_response(status, error, detail, request_id_of(request), headers)


def _guard(request: Request, name: str) -> Response | Registrar:
    """Return the registrar to use, or the error response that ends the request."""
    token: str | None = request.app.state.settings.gateway_admin_token
    if not token:
        return _error(request, 404, "not_found", "admin endpoints are off (GATEWAY_ADMIN_TOKEN is not set)")
    if not bearer_ok(request.headers.get("authorization"), token):
        return _error(
            request,
            401,
            "unauthorized",
            "a valid admin bearer token is required",
            **{"www-authenticate": "Bearer"},
        )
    why = validate_service_name(name)
    if why:
        return _error(request, 400, "bad_request", why)
    registrar: Registrar | None = request.app.state.runtime.registrar
    if registrar is None:
        return _error(request, 409, "conflict", "the active discovery provider does not accept registrations")
    return registrar


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    reason = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
    return f"{where}: {reason}"


@router.post("/services/{name}/instances", status_code=201, response_model=None)
async def register_instance(name: str, request: Request) -> Response:
    """Register (or replace) an instance of ``name``; answer 201 with what was stored."""
    guard = _guard(request, name)
    if isinstance(guard, Response):
        return guard
    try:
        body = InstanceBody.model_validate_json(await request.body())
    except ValidationError as exc:
        return _error(request, 400, "bad_request", _describe(exc))
    instance = Instance(
        id=body.id or default_id(body.host, body.port),
        host=body.host,
        port=body.port,
        weight=body.weight,
        health_path=body.health_path,
        metadata=tuple(sorted(body.metadata.items())),
        source="redis",
    )
    ttl = body.ttl if body.ttl is not None else math.inf
    try:
        check_instance(instance)
        await guard.register(name, instance, ttl)
    except ValueError as exc:
        return _error(request, 400, "bad_request", str(exc))
    except DiscoveryError as exc:
        return _error(request, 503, "registry_unavailable", str(exc))
    doc: dict[str, Any] = {
        "service": name,
        "id": instance.id,
        "host": instance.host,
        "port": instance.port,
        "weight": instance.weight,
        "metadata": dict(instance.metadata),
        "health_path": instance.health_path,
        "ttl": body.ttl,
    }
    return Response(orjson.dumps(doc), status_code=201, media_type="application/json")


@router.delete("/services/{name}/instances/{instance_id}", status_code=204, response_model=None)
async def deregister_instance(name: str, instance_id: str, request: Request) -> Response:
    """Remove one instance of ``name``: 204, or 404 when it is not registered."""
    guard = _guard(request, name)
    if isinstance(guard, Response):
        return guard
    try:
        removed = await guard.deregister(name, instance_id)
    except ValueError as exc:
        return _error(request, 400, "bad_request", str(exc))
    except DiscoveryError as exc:
        return _error(request, 503, "registry_unavailable", str(exc))
    if not removed:
        return _error(request, 404, "instance_not_found", f"{name}/{instance_id} is not registered")
    return Response(status_code=204)
