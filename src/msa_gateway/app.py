"""The ASGI application: the gateway's own endpoints (FastAPI) in front of the proxy (raw ASGI).

Requests whose first raw path segment is one of the gateway's own names go to FastAPI; every
other request goes straight to the proxy, so the framework never sits on the proxy's path.
The lifespan builds the runtime, starts discovery and closes everything in order.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from msa_gateway import __version__
from msa_gateway.errors import error_response
from msa_gateway.listeners import ManagementListener, Surface, read_denied
from msa_gateway.proxy.handler import ProxyApp
from msa_gateway.proxy.paths import Dispatch
from msa_gateway.routers.deps import request_id_of
from msa_gateway.runtime import Runtime
from msa_gateway.server import LOST, adopt_uvicorn
from msa_gateway.settings import GatewayConfig, Settings
from msa_gateway.write_batch import WriteBatch

log = logging.getLogger("msa_gateway.app")
READY_WAIT_SECONDS = 2.0


def build_api(settings: Settings, surface: Surface = Surface.ALL) -> FastAPI:
    """Return the FastAPI app serving the gateway's own endpoints (those of ``surface``).

    ``/redoc`` is off: it loads its script from a CDN; ``/docs`` and ``/openapi.json`` describe the same.
    """
    from msa_gateway.routers import admin_router, dashboard, health, metrics, root, services

    management = surface is not Surface.PUBLIC
    api = FastAPI(
        title="msa-gateway",
        version=__version__,
        description="The gateway's own endpoints. Every other path is proxied to `/{service}/{path}`.",
        redirect_slashes=False,
        docs_url="/docs" if management else None,
        openapi_url="/openapi.json" if management else None,
        redoc_url=None,
    )
    api.state.settings = settings
    api.state.probe_rounds = services.ProbeRounds()
    api.include_router(root.router)
    api.include_router(health.router)
    if management:
        api.include_router(metrics.router)
        api.include_router(services.router)
        api.include_router(admin_router)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        names = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden"}
        error = names.get(exc.status_code, "error")
        return error_response(exc.status_code, error, str(exc.detail), request_id_of(request), exc.headers)

    @api.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(422, "invalid_request", f"{where}: {first.get('msg')}", request_id_of(request))

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error in a gateway endpoint", extra={"path": request.url.path})
        return error_response(500, "internal_error", "unexpected error", request_id_of(request))

    @api.middleware("http")
    async def _request_id_and_access_line(request: Request, call_next: Callable[[Request], Any]) -> Any:
        started = time.perf_counter()
        rid = request_id_of(request)
        if read_denied(settings, request.method, request.url.path, request.headers.get("authorization")):
            detail = "a valid bearer token (ADMIN_READ_TOKEN) is required"
            response = error_response(401, "unauthorized", detail, rid, {"www-authenticate": "Bearer"})
        else:
            response = await call_next(request)
        response.headers.setdefault("x-request-id", rid)
        runtime = getattr(request.app.state, "runtime", None)
        if runtime is not None and runtime.worker is not None:
            response.headers["x-gateway-worker"] = str(runtime.worker)
        if runtime is not None:
            runtime.access.log(
                method=request.method,
                path=request.url.path,
                status=response.status_code,
                started=started,
                request_id=rid,
                service="-",
                instance="-",
                nbytes=int(response.headers.get("content-length", 0)),
                client=request.client.host if request.client else "-",
            )
        return response

    if surface is Surface.ADMIN:  # only there: on the public port /dashboard stays a service's path
        api.include_router(dashboard.router)
        api.add_middleware(
            dashboard.EventStream
        )  # added last: outermost, ahead of the access-line middleware
    return api


class GatewayApp:
    """The ASGI entry point: lifespan, own endpoints, proxy."""

    def __init__(
        self,
        settings: Settings,
        config: GatewayConfig,
        runtime_factory: Callable[[], Runtime] | None = None,
        *,
        management: bool = True,
    ):
        """``management=False`` (workers but 0) leaves the ``ADMIN_PORT`` listener to another process."""
        self.settings = settings
        self.config = config
        self._factory = runtime_factory or (lambda: Runtime(settings, config))
        split = settings.admin_port is not None
        self.api = build_api(settings, Surface.PUBLIC if split else Surface.ALL)
        admin = split and management
        self.management = ManagementListener(build_api(settings, Surface.ADMIN), settings) if admin else None
        self.runtime: Runtime | None = None
        self._dispatch = Dispatch()
        # Return the proxy when it serves a request (scope), None for the gateway's own endpoints.
        # ``protocol.py`` asks it too, and runs a proxied request as its task's only coroutine:
        # without uvicorn's ``run_asgi`` and ``__call__`` around it (two frames that every
        # resumption of the request passes through). The proxy answers its own crashes (500).
        self.direct_app: Callable[[dict[str, Any]], ProxyApp | None] = self._dispatch.direct_app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Dispatch one ASGI connection."""
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if self.runtime is None:
            # Served without lifespan support: build the runtime on first use.
            log.warning("client_protections_off", extra={"reason": f"served without lifespan: {LOST}"})
            await self._startup()
        proxy = self.direct_app(scope)
        if proxy is None:
            await self.api(scope, receive, send)
        else:
            await proxy(scope, receive, send)

    @property
    def proxy(self) -> ProxyApp | None:
        """The proxy, built at start-up."""
        return self._dispatch.proxy  # type: ignore[no-any-return]

    @proxy.setter
    def proxy(self, proxy: ProxyApp | None) -> None:
        self._dispatch.proxy = proxy

    @property
    def write_batch(self) -> WriteBatch | None:
        """The proxy's writes held for the end of a loop turn: ``protocol.py`` flushes them before its own."""
        return self.runtime.writes if self.runtime is not None else None

    async def _startup(self) -> None:
        runtime = self._factory()
        self.runtime = runtime
        self.api.state.runtime = runtime
        self.proxy = ProxyApp(runtime)
        await runtime.start()
        await runtime.wait_loaded(READY_WAIT_SECONDS)
        if self.management is not None:
            self.management.api.state.runtime = runtime
            await self.management.start()
        # Everything built so far lives for the whole process: keep it out of the collector's
        # full passes, which otherwise stall the loop for ~100 ms on a large registry.
        gc.collect()
        gc.freeze()

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    adopt_uvicorn(receive, self.settings)
                    await self._startup()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.runtime is not None:
                    self.runtime.draining = True
                    if self.management is not None:
                        await self.management.stop()
                    await self.runtime.aclose()
                log.info("gateway stopped")
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings | None = None, config: GatewayConfig | None = None) -> GatewayApp:
    """Return the gateway app for ``settings`` (default: from the environment) and its YAML config."""
    from msa_gateway.settings import load_config

    settings = settings or Settings()
    config = config or load_config(settings.gateway_config)
    return GatewayApp(settings, config)
