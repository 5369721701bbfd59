"""``/dashboard`` and ``/dashboard/events``: the live web dashboard on the management listener.

The page is one HTML file shipped in the package (``static/dashboard.html``: inline CSS and
JavaScript, nothing fetched from anywhere else, which its Content-Security-Policy enforces); it
renders the server-sent events of ``/dashboard/events`` (``observability/feed.py``), served by
``EventStream`` as plain ASGI.

With ``ADMIN_READ_TOKEN`` set both need a token, and a browser cannot put a header on an
``EventSource``, so three forms are accepted, each compared in constant time:
``Authorization: Bearer <token>``, ``?token=<token>`` and the cookie the page sets once a token
was accepted. The cookie holds an HMAC of the token, not the token itself (it opens only the
dashboard), is ``HttpOnly``, ``SameSite=Strict`` and scoped to ``/dashboard``; the page then
drops ``?token=`` from the address bar. ``GATEWAY_ADMIN_TOKEN`` is accepted as well, as on the
other read endpoints.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import re
import time
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from msa_gateway.errors import error_response
from msa_gateway.listeners import bearer_ok
from msa_gateway.routers.deps import request_id_of, runtime_of

router = APIRouter(prefix="/dashboard", tags=["dashboard"])
COOKIE = "msa_gateway_dashboard"
EVENTS_PATH = "/dashboard/events"
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


class EventStream:
    """``GET /dashboard/events`` as plain ASGI, ahead of FastAPI's middleware; other requests pass through.

    Through the framework every event would cross the access-line middleware's memory streams and
    a task group per connection (about a millisecond of CPU per event per client here); written
    directly, an event is one ``send`` per subscriber. One access line is written when a stream ends.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the event stream, or hand the request to the app."""
        if scope["type"] != "http" or scope["path"] != EVENTS_PATH or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request = Request(scope, receive)
        allowed, _ = authorize(request)
        if not allowed:
            await _denied(request)(scope, receive, send)
            status, sent = 401, 0
        else:
            status, sent = 200, await _stream(request, send)
        runtime_of(request).access.log(
            method="GET",
            path=EVENTS_PATH,
            status=status,
            started=started,
            request_id=request_id_of(request),
            service="-",
            instance="-",
            nbytes=sent,
            client=request.client.host if request.client else "-",
        )


async def _stream(request: Request, send: Send) -> int:
    """Write the feed's events to one client until it leaves or the feed closes; return the bytes sent."""
    runtime = runtime_of(request)
    feed = runtime.live
    headers = [
        (b"content-type", b"text/event-stream"),
        (b"cache-control", b"no-store"),
        (b"x-accel-buffering", b"no"),
        (b"x-request-id", request_id_of(request).encode()),
    ]
    if runtime.worker is not None:
        headers.append((b"x-gateway-worker", b"%d" % runtime.worker))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    gone = asyncio.Event()

    async def watch() -> None:
        # uvicorn drops writes to a closed connection silently: its disconnect message is the signal.
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone.set()
        feed.wake()

    watcher = asyncio.get_running_loop().create_task(watch(), name="dashboard-client")
    sent = 0
    try:
        async for chunk in feed.events(gone):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent += len(chunk)
        if not gone.is_set():
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        watcher.cancel()
    return sent
