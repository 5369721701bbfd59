"""Admin endpoints that register and remove instances through the active provider's registrar.

Off (404) unless ``GATEWAY_ADMIN_TOKEN`` is set; then every call needs
``Authorization: Bearer <token>`` (401 otherwise). Writes go to the registry
``SERVICE_DISCOVERY_TYPE`` names (Redis or etcd); with ``static`` or ``consul`` they answer 409
``registrations_not_supported`` saying where instances are registered instead. The body is an
instance record (``codec``) plus ``ttl``; ``ttl`` omitted means the entry never expires.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from msa_gateway.discovery import codec
from msa_gateway.discovery.base import Registrar
from msa_gateway.discovery.providers import NO_REGISTRAR
from msa_gateway.errors import DiscoveryError, error_response
from msa_gateway.listeners import bearer_ok
from msa_gateway.model import Instance
from msa_gateway.routers.deps import request_id_of
from msa_gateway.settings import validate_service_name

router = APIRouter()


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
        kind = request.app.state.settings.service_discovery_type
        return _error(request, 409, "registrations_not_supported", NO_REGISTRAR.get(kind, kind))
    return registrar


def _parse_body(body: bytes, source: str) -> tuple[Instance, float]:
    """Decode the JSON body: an instance record (``codec``, unknown fields rejected) plus ``ttl``."""
    try:
        doc: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"body: malformed JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError("body: expected a JSON object")
    ttl = doc.pop("ttl", None)
    if ttl is None:
        ttl = math.inf
    elif isinstance(ttl, bool) or not isinstance(ttl, int | float) or math.isinf(ttl):
        raise ValueError(f"ttl: must be a number of seconds or null, not {ttl!r}")
    instance = codec.decode_record(doc, source=source, unknown="reject")
    return instance, codec.check_ttl(float(ttl))


@router.post("/services/{name}/instances", status_code=201, response_model=None)
async def register_instance(name: str, request: Request) -> Response:
    """Register (or replace) an instance of ``name``; answer 201 with what was stored."""
    guard = _guard(request, name)
    if isinstance(guard, Response):
        return guard
    try:
        instance, ttl = _parse_body(await request.body(), request.app.state.settings.service_discovery_type)
    except ValueError as exc:
        return _error(request, 400, "bad_request", str(exc))
    try:
        await guard.register(name, instance, ttl)
    except ValueError as exc:
        return _error(request, 400, "bad_request", str(exc))
    except DiscoveryError as exc:
        return _error(request, 503, "registry_unavailable", str(exc))
    doc = {"service": name, **codec.to_record(instance), "ttl": None if math.isinf(ttl) else ttl}
    del doc["scheme"]
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
