"""Where the gateway's own endpoints are served, and who may read them.

Without ``ADMIN_PORT`` every endpoint stays on the public listener (the seed's layout). With it,
the public listener keeps the proxy and the probes (``/``, ``/health/*``); the management
endpoints (``/services*``, ``/metrics``, ``/docs``, ``/openapi.json`` and the admin writes) move
to a second listener on ``ADMIN_HOST:ADMIN_PORT``, like Traefik's ``traefik`` entrypoint or
Envoy's admin address. The second listener is a uvicorn server in the same event loop, sharing
the runtime, started and stopped by the application's lifespan (so it works under ``msa-gateway
run`` and plain ``uvicorn`` alike); the main server keeps the signals.

``ADMIN_READ_TOKEN`` guards the read endpoints on whichever listener serves them (the write token
``GATEWAY_ADMIN_TOKEN`` is accepted there too); both are compared in constant time.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hmac
import logging
import socket
from collections.abc import Generator
from typing import Any

import uvicorn

from msa_gateway.server import server_limits, uvicorn_config
from msa_gateway.settings import Settings

log = logging.getLogger("msa_gateway.server")

# First path segments of the management endpoints (the read ones need ADMIN_READ_TOKEN when set).
MANAGEMENT_SEGMENTS = frozenset({"services", "metrics", "docs", "openapi.json"})
START_TIMEOUT = 10.0


class Surface(enum.Enum):
    """Which of the gateway's own endpoints an API instance serves."""

    ALL = "all"  # one listener: everything
    PUBLIC = "public"  # the public listener beside a management one: /, /health/*
    ADMIN = "admin"  # the management listener: everything but the proxy


def bearer_ok(authorization: str | None, *tokens: str | None) -> bool:
    """Return whether ``Authorization: Bearer <t>`` carries one of ``tokens`` (constant-time compare)."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    presented = given.strip().encode()
    # Compare against every token, so the time taken does not tell which one nearly matched.
    matches = [hmac.compare_digest(presented, t.encode()) for t in tokens if t]
    return any(matches)


def read_denied(settings: Settings, method: str, path: str, authorization: str | None) -> bool:
    """Return whether a read of a management endpoint lacks the token ``ADMIN_READ_TOKEN`` asks for."""
    if not settings.admin_read_token or method not in ("GET", "HEAD"):
        return False
    first = path.lstrip("/").split("/", 1)[0]
    if first not in MANAGEMENT_SEGMENTS:
        return False
    return not bearer_ok(authorization, settings.admin_read_token, settings.gateway_admin_token)


class ManagementServer(uvicorn.Server):
    """A second uvicorn server in the gateway's loop; the main server owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Leave signal handling to the main server (it stops this one in its lifespan shutdown)."""
        yield


class ManagementListener:
    """The management listener's server and task, started and stopped by the gateway's lifespan."""

    def __init__(self, api: Any, settings: Settings) -> None:
        assert settings.admin_port is not None
        self.api = api
        self.host = settings.admin_host
        self.port = settings.admin_port
        config = uvicorn_config(
            api, self.host, self.port, server_limits(settings), lifespan="off", log_config=None
        )
        self.server = ManagementServer(config)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind (a taken address fails start-up with a clear error) and serve until ``stop``."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise OSError(f"management listener {self.host}:{self.port}: {exc.strerror or exc}") from None
        sock.set_inheritable(True)
        self.task = asyncio.get_running_loop().create_task(
            self.server.serve(sockets=[sock]), name="management-listener"
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not self.server.started:
            if self.task.done():
                self.task.result()
                raise RuntimeError("the management listener stopped while starting")
            if loop.time() > deadline:
                raise TimeoutError("the management listener did not start")
            await asyncio.sleep(0.01)
        log.info("management_listener_started", extra={"address": f"{self.host}:{self.port}"})

    async def stop(self) -> None:
        """Close the listener and wait (boundedly) for its connections to finish."""
        if self.task is None:
            return
        self.server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, START_TIMEOUT)
        self.task = None
