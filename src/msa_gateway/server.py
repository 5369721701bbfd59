"""How uvicorn serves the gateway, whichever way it is started.

``msa-gateway run`` builds ``GatewayServer`` with the gateway's protocol (``protocol.py``) and
settings. ``uvicorn msa_gateway.main:app`` builds uvicorn's own config; at lifespan start-up,
before uvicorn opens its listening socket, ``adopt_uvicorn`` puts the same protocol, drain timeout
and proxy-header policy into that config, so the client-side protections hold there too. This
relies on uvicorn internals (the lifespan's ``receive`` is a method of ``LifespanOn``, which holds
the ``Config``; ``Server.startup`` runs the lifespan before ``create_server``): the version range
is pinned in ``pyproject.toml`` and tested. When the server is not uvicorn (or not with lifespan),
one warning line says the protections are off.
"""

from __future__ import annotations

import logging
import math
import signal
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

import uvicorn
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from msa_gateway.protocol import ProtocolFactory, ServerLimits, make_protocol
from msa_gateway.settings import Settings

if TYPE_CHECKING:
    from msa_gateway.app import GatewayApp

log = logging.getLogger("msa_gateway.server")
LOST = (
    "MAX_REQUEST_LINE, MAX_HEADER_BYTES, MAX_HEADERS, HEADER_TIMEOUT, strict request framing "
    "and DRAIN_TIMEOUT are NOT enforced; start it with `msa-gateway run`"
)


def server_limits(settings: Settings) -> ServerLimits:
    """Return the client-side limits the settings ask for."""
    return ServerLimits(
        max_request_line=settings.max_request_line,
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        head_timeout=settings.header_timeout,
    )


def uvicorn_config(
    app: Any, host: str, port: int, limits: ServerLimits, *, busy_poll_us: int = 0, **options: Any
) -> uvicorn.Config:
    """Return a uvicorn config with the gateway's protocol and without uvicorn's own headers or rewriting.

    No ``server``/``date`` headers, no access log of uvicorn's (the gateway writes its own), no
    ``X-Forwarded-*`` rewriting (the gateway applies its trusted-proxy rules); ``options`` add to it.
    """
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=cast(Any, make_protocol(limits, busy_poll_us)),  # uvicorn calls it as a class: a factory does
        access_log=False,
        server_header=False,
        date_header=False,
        proxy_headers=False,
        **options,
    )


def uvicorn_config_of(receive: Any) -> uvicorn.Config | None:
    """Return the ``uvicorn.Config`` serving this lifespan, or None (another server, or wrapped)."""
    config = getattr(getattr(receive, "__self__", None), "config", None)
    return config if isinstance(config, uvicorn.Config) else None


def adopt_uvicorn(receive: Any, settings: Settings) -> bool:
    """Give a plain ``uvicorn msa_gateway.main:app`` the gateway's protocol; return whether it holds."""
    config = uvicorn_config_of(receive)
    if config is None:
        log.warning("client_protections_off", extra={"reason": f"not served by uvicorn: {LOST}"})
        return False
    current: Any = config.http_protocol_class
    if isinstance(current, ProtocolFactory):
        return True  # msa-gateway run: the settings' limits are bound already
    # Any other protocol, the gateway's own class named by --http too (it would run on default limits).
    config.http_protocol_class = cast(Any, make_protocol(server_limits(settings), settings.busy_poll_us))
    config.timeout_graceful_shutdown = math.ceil(settings.drain_timeout)
    if isinstance(config.loaded_app, ProxyHeadersMiddleware):
        # uvicorn's X-Forwarded-For rewriting would bypass the gateway's trusted_proxies rule.
        config.loaded_app = config.loaded_app.app
    log.info(
        "uvicorn_protocol_replaced",
        extra={"replaced": getattr(current, "__name__", str(current)), "limits": "client limits enforced"},
    )
    return True


class GatewayServer(uvicorn.Server):
    """uvicorn's server, but a SIGTERM marks the gateway as draining and ends with exit code 0."""

    def __init__(self, config: uvicorn.Config, app: GatewayApp) -> None:
        super().__init__(config)
        self.gateway = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Start the graceful shutdown; readiness turns 503 at once."""
        if self.gateway.runtime is not None:
            self.gateway.runtime.draining = True
        if sig == signal.SIGTERM:
            # uvicorn re-raises captured signals after shutdown (exit -15); a clean drain is a clean exit.
            self.should_exit = True
            return
        super().handle_exit(sig, frame)
