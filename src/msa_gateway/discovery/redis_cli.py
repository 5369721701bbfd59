"""``msa-gateway register`` and ``msa-gateway deregister``: write instances into Redis by hand.

The connection comes from the same ``REDIS_*`` environment variables (and ``.env``) as the
gateway. Exit status: 0 done, 1 registry unreachable or instance unknown, 2 invalid input.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
import sys

import orjson

from msa_gateway.discovery.redis_registry import (
    RedisRegistrar,
    ServiceRegistration,
    check_instance,
    default_id,
)
from msa_gateway.errors import DiscoveryError
from msa_gateway.model import Instance
from msa_gateway.settings import Settings, validate_service_name

DEFAULT_HEARTBEAT_TTL = 10.0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``register`` and ``deregister`` subcommands; each sets ``func(args) -> int``."""
    reg = sub.add_parser(
        "register",
        help="register a service instance in Redis",
        description="Register an instance in the Redis registry (REDIS_* environment variables).",
    )
    reg.add_argument("service", help="service name, as routed by the gateway (/{service}/...)")
    reg.add_argument("--host", required=True, help="host name or IP the gateway connects to")
    reg.add_argument("--port", type=int, required=True, help="TCP port of the instance")
    reg.add_argument("--id", dest="instance_id", help="instance id (default: host:port)")
    reg.add_argument("--weight", type=int, default=1, help="balancing weight 1-1000 (default 1)")
    reg.add_argument(
        "--ttl",
        type=float,
        help=f"seconds until the entry expires without a heartbeat "
        f"(default: {DEFAULT_HEARTBEAT_TTL:g} with --heartbeat, never without)",
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

    dereg = sub.add_parser("deregister", help="remove a service instance from Redis")
    dereg.add_argument("service")
    dereg.add_argument("id", help="instance id given (or printed) at registration")
    dereg.set_defaults(func=deregister_command)


def _instance(args: argparse.Namespace) -> tuple[Instance, float]:
    """Build the instance and TTL from the arguments; raise ``ValueError`` on bad input."""
    why = validate_service_name(args.service)
    if why:
        raise ValueError(why)
    metadata: dict[str, str] = {}
    for pair in args.meta:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--meta expects KEY=VALUE, got {pair!r}")
        metadata[key] = value
    instance = Instance(
        id=args.instance_id or default_id(args.host, args.port),
        host=args.host,
        port=args.port,
        weight=args.weight,
        health_path=args.health_path,
        metadata=tuple(sorted(metadata.items())),
        source="redis",
    )
    check_instance(instance)
    ttl = args.ttl if args.ttl is not None else (DEFAULT_HEARTBEAT_TTL if args.heartbeat else math.inf)
    if not ttl > 0:
        raise ValueError("--ttl must be positive")
    return instance, ttl


def register_command(args: argparse.Namespace) -> int:
    """Register once, or keep heartbeating with ``--heartbeat`` until SIGINT/SIGTERM."""
    try:
        instance, ttl = _instance(args)
    except ValueError as exc:
        print(f"msa-gateway register: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_register(args.service, instance, ttl, args.heartbeat))


async def _register(service: str, instance: Instance, ttl: float, heartbeat: bool) -> int:
    registrar = RedisRegistrar.from_settings(Settings())
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
    why = validate_service_name(args.service)
    if why:
        print(f"msa-gateway deregister: {why}", file=sys.stderr)
        return 2
    return asyncio.run(_deregister(args.service, args.id))


async def _deregister(service: str, instance_id: str) -> int:
    registrar = RedisRegistrar.from_settings(Settings())
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
