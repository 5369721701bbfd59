"""``/dashboard`` and ``/dashboard/events``: the live web dashboard on the management listener.

The page is one HTML file shipped in the package (``static/dashboard.html``: inline CSS and
JavaScript, nothing fetched from anywhere else, which its Content-Security-Policy enforces); it
renders the server-sent events of ``/dashboard/events`` (``observability/feed.py``).

With ``ADMIN_READ_TOKEN`` set both need a token, and a browser cannot put a header on an
``EventSource``, so three forms are accepted, each compared in constant time:
``Authorization: Bearer <token>``, ``?token=<token>`` and the cookie the page sets once a token
was accepted. The cookie holds an HMAC of the token, not the token itself (it opens only the
dashboard), is ``HttpOnly``, ``SameSite=Strict`` and scoped to ``/dashboard``; the page then
drops ``?token=`` from the address bar. ``GATEWAY_ADMIN_TOKEN`` is accepted as well, as on the
other read endpoints.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from msa_gateway.errors import error_response
from msa_gateway.listeners import bearer_ok
from msa_gateway.routers.deps import request_id_of, runtime_of

router = APIRouter(prefix="/dashboard", tags=["dashboard"])
COOKIE = "msa_gateway_dashboard"
_COOKIE_CONTEXT = b"msa-gateway dashboard cookie v1"


def cookie_value(token: str) -> str:
    """Return what the dashboard cookie holds for ``token``: an HMAC, so the cookie is not the token."""
    return hmac.new(token.encode(), _COOKIE_CONTEXT, hashlib.sha256).hexdigest()


def _match(presented: str, candidates: list[str]) -> int | None:
    """Return the index of the candidate ``presented`` equals, comparing every one in constant time."""
    # Every candidate is compared, so the time taken does not tell which one nearly matched.
    hits = [hmac.compare_digest(presented.encode(), c.encode()) for c in candidates]
    return hits.index(True) if any(hits) else None


def authorize(request: Request) -> tuple[bool, str | None]:
    """Return whether the request may read the dashboard, and the cookie to set (None: none to set)."""
    settings = request.app.state.settings
    if not settings.admin_read_token:
        return True, None
    tokens = [t for t in (settings.admin_read_token, settings.gateway_admin_token) if t]
    if bearer_ok(request.headers.get("authorization"), *tokens):
        return True, None
    given = request.query_params.get("token")
    if given is not None:
        hit = _match(given, tokens)
        return (False, None) if hit is None else (True, cookie_value(tokens[hit]))
    cookie = request.cookies.get(COOKIE)
    return cookie is not None and _match(cookie, [cookie_value(t) for t in tokens]) is not None, None


def _denied(request: Request) -> Response:
    detail = "a valid token (ADMIN_READ_TOKEN) is required: Authorization: Bearer, ?token= or the cookie"
    return error_response(401, "unauthorized", detail, request_id_of(request), {"www-authenticate": "Bearer"})


@functools.cache
def page() -> tuple[bytes, str]:
    """Return the page and its Content-Security-Policy (allowing exactly its inline style and script)."""
    html = resources.files("msa_gateway").joinpath("static/dashboard.html").read_bytes()

    def digest(tag: bytes) -> str:
        match = re.search(rb"<%b>(.*?)</%b>" % (tag, tag), html, re.DOTALL)
        assert match is not None, f"dashboard.html has no <{tag.decode()}>"
        return "'sha256-" + base64.b64encode(hashlib.sha256(match.group(1)).digest()).decode() + "'"

    csp = (
        f"default-src 'none'; style-src {digest(b'style')}; script-src {digest(b'script')}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return html, csp


@router.get("", summary="The live dashboard (HTML)", response_model=None)
@router.get("/", include_in_schema=False, response_model=None)
async def dashboard(request: Request) -> Response:
    """Serve the page; with ``?token=`` accepted, also the cookie that lets its event stream in."""
    allowed, cookie = authorize(request)
    if not allowed:
        return _denied(request)
    html, csp = page()
    response = Response(
        html,
        media_type="text/html; charset=utf-8",
        headers={
            "content-security-policy": csp,
            "referrer-policy": "no-referrer",
            "x-content-type-options": "nosniff",
            "cache-control": "no-store",
        },
    )
    if cookie is not None:
        response.set_cookie(COOKIE, cookie, path="/dashboard", httponly=True, samesite="strict")
    return response


@router.get("/events", summary="The dashboard's server-sent events: one JSON snapshot a second")
async def events(request: Request) -> Response:
    """Stream ``text/event-stream``: one event per tick with services, instances, rates, discovery, config."""
    allowed, _ = authorize(request)
    if not allowed:
        return _denied(request)
    return StreamingResponse(
        runtime_of(request).live.events(),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )
