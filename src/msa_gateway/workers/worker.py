"""One supervised worker: the gateway on the socket its supervisor handed down."""

from __future__ import annotations

import signal
import socket

from msa_gateway.app import GatewayApp
from msa_gateway.runtime import Runtime
from msa_gateway.settings import GatewayConfig, Settings
from msa_gateway.workers.link import WorkerEnv, WorkerLink
from msa_gateway.workers.supervisor import STARTUP_FAILED


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
