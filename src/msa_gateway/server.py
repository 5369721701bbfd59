"""The uvicorn server the CLI runs: SIGTERM means drain and exit 0, as orchestrators expect."""

from __future__ import annotations

import signal
from types import FrameType

import uvicorn

from msa_gateway.app import GatewayApp


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
