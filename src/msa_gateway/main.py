"""``uvicorn msa_gateway.main:app``: the gateway built from the environment and its YAML file.

A configuration mistake ends the process at import with one line naming file, key and reason.
At lifespan start-up the app puts the gateway's HTTP protocol, drain timeout and proxy-header
policy into uvicorn's config (``server.adopt_uvicorn``), so the client-side limits and the
framing checks hold as under ``msa-gateway run``.
"""

from __future__ import annotations

import sys

from msa_gateway.app import GatewayApp, create_app
from msa_gateway.errors import ConfigError
from msa_gateway.observability.logging import configure_logging
from msa_gateway.settings import Settings, env_error


def _build() -> GatewayApp:
    try:
        settings = Settings()
    except Exception as exc:
        print(f"msa-gateway: {env_error(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.debug, settings.log_level)
    try:
        return create_app(settings)
    except ConfigError as exc:
        print(f"msa-gateway: config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


app = _build()
