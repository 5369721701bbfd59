"""The ``msa-gateway`` command: ``run``, ``check-config``, ``version`` (and registry commands)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from msa_gateway import __version__
from msa_gateway.discovery.registry_cli import add_commands as add_registry_commands
from msa_gateway.errors import ConfigError
from msa_gateway.settings import EMBEDDED_CONFIG, GatewayConfig, Settings, env_error, load_config

if TYPE_CHECKING:
    from msa_gateway.app import GatewayApp
    from msa_gateway.server import GatewayServer


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    for key in ("host", "port", "service_discovery_type", "gateway_config", "workers"):
        value = getattr(args, key, None)
        if value is not None:
            overrides[key] = value
    try:
        return Settings(**overrides)
    except Exception as exc:
        raise SystemExit(f"msa-gateway: {env_error(exc)}") from None


def _config(path: str | None) -> GatewayConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise SystemExit(f"msa-gateway: config error: {exc}") from None


def cmd_run(args: argparse.Namespace) -> int:
    """Serve the gateway with uvicorn (uvloop + httptools, our JSON logging); ``--workers N`` supervises N."""
    from msa_gateway.app import GatewayApp
    from msa_gateway.observability.logging import configure_logging
    from msa_gateway.workers.link import WorkerEnv

    settings = _settings(args)
    config = _config(settings.gateway_config)
    configure_logging(settings.debug, settings.log_level)
    worker = WorkerEnv.from_environ()
    if worker is not None:
        from msa_gateway.workers.worker import serve_worker

        return serve_worker(worker, settings, config)
    if settings.workers > 1:
        from msa_gateway.workers.supervisor import WorkerSupervisor

        try:
            return WorkerSupervisor(settings, args.argv).run()
        except OSError as exc:
            raise SystemExit(f"msa-gateway: {exc}") from None
    app = GatewayApp(settings, config)
    server = gateway_server(app, settings)
    server.run()
    return 0 if server.started else 1


def gateway_server(app: GatewayApp, settings: Settings) -> GatewayServer:
    """Return the uvicorn server ``msa-gateway run`` serves ``app`` with (one process or one worker)."""
    from msa_gateway.observability.logging import uvicorn_log_config
    from msa_gateway.server import GatewayServer, server_limits, uvicorn_config

    server_config = uvicorn_config(
        app,
        settings.host,
        settings.port,
        server_limits(settings),
        busy_poll_us=settings.busy_poll_us,
        loop="uvloop",
        lifespan="on",
        log_config=uvicorn_log_config(settings.debug),
        timeout_keep_alive=75,
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout),
        backlog=2048,
    )
    return GatewayServer(server_config, app)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a YAML file and exit 0 when it is fine, 2 with one line when not."""
    path = args.file or os.environ.get("GATEWAY_CONFIG") or EMBEDDED_CONFIG
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"msa-gateway: config error: {exc}", file=sys.stderr)
        return 2
    n = sum(len(s.instances) for s in config.services.values())
    counts = f"{len(config.services)} services, {n} static instances, {len(config.routes)} routes"
    print(f"{config.source}: ok ({counts})")
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    """Print the version."""
    print(f"msa-gateway {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="msa-gateway", description="An API gateway for microservices.")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="serve the gateway (settings from env vars and .env)")
    run.add_argument("--host", help="listen address (HOST, default 0.0.0.0)")
    run.add_argument("--port", type=int, help="listen port (PORT, default 8000)")
    run.add_argument("--config", dest="gateway_config", help="YAML file (GATEWAY_CONFIG)")
    run.add_argument("--discovery", dest="service_discovery_type", help="static|consul|redis|etcd")
    run.add_argument("--workers", help="worker processes: a number or auto (WORKERS, default 1)")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check-config", help="validate a YAML config file without starting")
    check.add_argument("file", nargs="?", help="the YAML file (default: GATEWAY_CONFIG or the embedded one)")
    check.set_defaults(func=cmd_check_config)
    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=cmd_version)
    add_registry_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line."""
    parser = build_parser()
    given = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(given)
    if not getattr(args, "func", None):
        given = ["run", *given]
        args = parser.parse_args(given)
    args.argv = given  # what workers are started with
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
