"""Shared start-up for the demo services: command line, instance name, error body, uvicorn."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """Where one demo instance listens and the name it reports in every answer."""

    host: str
    port: int
    instance: str


def parse_args(service: str, default_port: int, argv: Sequence[str] | None = None) -> ServeOptions:
    """Read ``--host``, ``--port``, ``--instance`` (defaults: env ``HOST``, ``PORT``, ``INSTANCE_ID``)."""
    parser = argparse.ArgumentParser(prog=f"python -m examples.{service.replace('-', '_')}")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"), help="address to bind")
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("PORT", default_port)), help="TCP port"
    )
    parser.add_argument(
        "--instance",
        default=os.environ.get("INSTANCE_ID"),
        help=f"name reported in every answer (default: {service}-PORT)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a TCP port")
    instance = args.instance or f"{service}-{args.port}"
    return ServeOptions(host=args.host, port=args.port, instance=instance)


def not_found(kind: str, key: int, instance: str) -> JSONResponse:
    """Return the 404 JSON answer for a missing ``kind`` with id ``key``."""
    return JSONResponse(
        status_code=404,
        content={"error": "not_found", "detail": f"{kind} {key} not found", "instance": instance},
    )


def health(service: str, instance: str) -> dict[str, str]:
    """Return the body of ``GET /health``."""
    return {"status": "healthy", "service": service, "instance": instance}


def serve(app: FastAPI, options: ServeOptions) -> None:
    """Run ``app`` with uvicorn until SIGINT/SIGTERM (quiet: warnings only, no access log)."""
    uvicorn.run(app, host=options.host, port=options.port, log_level="warning", access_log=False)
