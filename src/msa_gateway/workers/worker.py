"""One supervised worker: the gateway on the socket its supervisor handed down."""

from __future__ import annotations

import os
import signal
import socket
import sys

from msa_gateway.app import GatewayApp
from msa_gateway.runtime import Runtime
from msa_gateway.settings import GatewayConfig, Settings
from msa_gateway.workers.link import FD_ENV, HUB_ENV, WORKER_ENV, WorkerEnv, WorkerLink

STARTUP_FAILED = 3  # the exit code of a worker whose start-up failed (uvicorn's too)
WORKER_MODULE = __name__  # what the supervisor's fork server imports once for every worker


def run_worker(index: int, count: int, sock: socket.socket, hub: str, argv: list[str]) -> None:
    """The entry point of a forked worker: ``msa-gateway run`` with its identity in the environment."""
    from msa_gateway.cli import main

    os.environ[WORKER_ENV] = f"{index}/{count}"
    os.environ[FD_ENV] = str(sock.detach())  # the server below owns the descriptor from now on
    os.environ[HUB_ENV] = hub
    sys.exit(main(argv))


def serve_worker(env: WorkerEnv, settings: Settings, config: GatewayConfig) -> int:
    """Serve until SIGTERM (forwarded by the supervisor); return 0, or ``STARTUP_FAILED``.

    Worker 0 also serves the ``ADMIN_PORT`` listener when one is configured (one process may bind it).
    """
    from msa_gateway.cli import gateway_server

    # A SIGHUP before the reload handler is installed must not end the worker (its default action).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def runtime() -> Runtime:
        rt = Runtime(settings, config)
        WorkerLink(env, rt).attach()
        return rt

    app = GatewayApp(settings, config, runtime, management=env.index == 0)
    server = gateway_server(app, settings)
    server.run(sockets=[socket.socket(fileno=env.fd)])
    return 0 if server.started else STARTUP_FAILED
