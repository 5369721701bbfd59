"""``msa-gateway register`` and ``msa-gateway deregister``: write instances into the registry by hand.

The registry is the one the gateway discovers from: ``SERVICE_DISCOVERY_TYPE`` (``redis`` or
``etcd``) and the same ``REDIS_*``/``ETCD_*`` environment variables (and ``.env``). With
``static`` or ``consul`` both commands refuse with one line saying where instances go instead.
Exit status: 0 done, 1 registry unreachable or instance unknown, 2 invalid input or a provider
that takes no registrations.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
import sys

import orjson

from msa_gateway.discovery import codec
from msa_gateway.discovery.base import Registrar
from msa_gateway.discovery.providers import NO_REGISTRAR, REGISTRARS, create_registrar
from msa_gateway.discovery.redis_registry import ServiceRegistration
from msa_gateway.errors import ConfigError, DiscoveryError
from msa_gateway.model import Instance
from msa_gateway.settings import Settings, env_error, validate_service_name

DEFAULT_HEARTBEAT_TTL = 10.0


class Refused(Exception):
    """The command cannot run: one line for stderr and the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``register`` and ``deregister`` subcommands; each sets ``func(args) -> int``."""
    reg = sub.add_parser(
        "register",
        help="register a service instance in the registry (Redis or etcd)",
        description="Register an instance in the registry SERVICE_DISCOVERY_TYPE names (redis or etcd; "
        "REDIS_* or ETCD_* environment variables).",
    )
    reg.add_argument("service", help="service name, as routed by the gateway (/{service}/...)")
    reg.add_argument("--host", required=True, help="host name or IP the gateway connects to")
    reg.add_argument("--port", type=int, required=True, help="TCP port of the instance")
    reg.add_argument("--id", dest="instance_id", help="instance id (default: host:port)")
    reg.add_argument("--weight", type=int, default=1, help="balancing weight 1-1000 (default 1)")
    reg.add_argument(
        "--ttl",
        type=float,
        help=f"seconds until the entry expires without a heartbeat (etcd: whole seconds, rounded up; "
        f"default: {DEFAULT_HEARTBEAT_TTL:g} with --heartbeat, never without)",
    )
    reg.add_argument(
        "--meta", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="metadata pairs"
    )
    reg.add_argument("--health-path", help="path the gateway probes, e.g. /health")
    reg.add_argument(
        "--heartbeat",
        action="store_true",
        help="keep running and heartbeating every ttl/3; deregister on Ctrl-C or SIGTERM",
    )
    reg.set_defaults(func=register_command)

    dereg = sub.add_parser("deregister", help="remove a service instance from the registry (Redis or etcd)")
    dereg.add_argument("service")
    dereg.add_argument("id", help="instance id given (or printed) at registration")
    dereg.set_defaults(func=deregister_command)


def _instance(args: argparse.Namespace, source: str) -> tuple[Instance, float]:
    """Build the instance and TTL from the arguments with the record rules; raise ``ValueError``."""
    why = validate_service_name(args.service)
    if why:
        raise ValueError(why)
    metadata: dict[str, str] = {}
    for pair in args.meta:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--meta expects KEY=VALUE, got {pair!r}")
        metadata[key] = value
    record = {
        "host": args.host,
        "port": args.port,
        "id": args.instance_id,
        "weight": args.weight,
        "health_path": args.health_path,
        "metadata": metadata,
    }
    if args.instance_id is None:
        del record["id"]
    instance = codec.decode_record(record, source=source, unknown="reject")
    ttl = args.ttl if args.ttl is not None else (DEFAULT_HEARTBEAT_TTL if args.heartbeat else math.inf)
    return instance, codec.check_ttl(ttl)


def _settings() -> Settings:
    """Return the settings when their provider takes registrations; raise ``Refused`` otherwise."""
    try:
        settings = Settings()
    except Exception as exc:  # pydantic's ValidationError: a bad environment variable
        raise Refused(env_error(exc), 2) from None
    kind = settings.service_discovery_type
    if kind not in REGISTRARS:
        raise Refused(NO_REGISTRAR.get(kind, f"SERVICE_DISCOVERY_TYPE={kind} takes no registrations"), 2)
    return settings


def _open(settings: Settings) -> Registrar:
    """Return the registrar of the provider ``_settings`` accepted (inside the event loop)."""
    try:
        registrar = create_registrar(settings)
    except ConfigError as exc:
        raise Refused(f"config error: {exc}", 2) from None
    if registrar is None:  # _settings() checked the table; kept for the type checker
        raise Refused(f"SERVICE_DISCOVERY_TYPE={settings.service_discovery_type} takes no registrations", 2)
    return registrar


def register_command(args: argparse.Namespace) -> int:
    """Register once, or keep heartbeating with ``--heartbeat`` until SIGINT/SIGTERM."""
    try:
        settings = _settings()
        instance, ttl = _instance(args, settings.service_discovery_type)
        return asyncio.run(_register(settings, args.service, instance, ttl, args.heartbeat))
    except Refused as exc:
        print(f"msa-gateway register: {exc}", file=sys.stderr)
        return exc.status
    except ValueError as exc:
        print(f"msa-gateway register: {exc}", file=sys.stderr)
        return 2


async def _register(settings: Settings, service: str, instance: Instance, ttl: float, heartbeat: bool) -> int:
    registrar = _open(settings)
    doc = {"service": service, "id": instance.id, "address": instance.address, "ttl": ttl}
    try:
        if not heartbeat:
            await registrar.register(service, instance, ttl)
            print(orjson.dumps({"registered": doc}).decode(), flush=True)
            return 0
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            async with ServiceRegistration(registrar, service, instance, ttl):
                print(orjson.dumps({"registered": doc, "heartbeat": True}).decode(), flush=True)
                await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        print(orjson.dumps({"deregistered": doc}).decode(), flush=True)
        return 0
    except DiscoveryError as exc:
        print(f"msa-gateway register: {exc}", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(DiscoveryError, OSError):
            await registrar.aclose()


def deregister_command(args: argparse.Namespace) -> int:
    """Remove one instance; exit 1 when it was not registered."""
    why = validate_service_name(args.service) or codec.validate_instance_id(args.id)
    if why:
        print(f"msa-gateway deregister: {why}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_deregister(_settings(), args.service, args.id))
    except Refused as exc:
        print(f"msa-gateway deregister: {exc}", file=sys.stderr)
        return exc.status


async def _deregister(settings: Settings, service: str, instance_id: str) -> int:
    registrar = _open(settings)
    try:
        removed = await registrar.deregister(service, instance_id)
    except (DiscoveryError, ValueError) as exc:
        print(f"msa-gateway deregister: {exc}", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(DiscoveryError, OSError):
            await registrar.aclose()
    if not removed:
        print(f"msa-gateway deregister: {service}/{instance_id} is not registered", file=sys.stderr)
        return 1
    print(orjson.dumps({"deregistered": {"service": service, "id": instance_id}}).decode(), flush=True)
    return 0
