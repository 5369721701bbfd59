"""The gateways one benchmark run measures side by side: the built-in one and its variants.

A variant is either the same command with other environment (``--extra-gateway NAME:KEY=VALUE``) or
another command (``--variant NAME=CMD``), e.g. the gateway of an older checkout. Every one is started
the same way (``GATEWAY_CONFIG``, ``HOST``, ``PORT`` in its environment, its own temp dir as cwd, pinned
to the proxy core) and reported under its name, so an old and a new gateway meet the same backend,
the same wrk and the same neighbours within one run.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bench.gateway import parse_env
from bench.report import CONFIGS

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")


@dataclass(frozen=True, slots=True)
class GatewayVariant:
    """A gateway process measured as configuration ``name``: its command and its extra environment."""

    name: str
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


def parse_command_variant(spec: str) -> tuple[str, tuple[str, ...]]:
    """Split ``NAME=CMD`` into the name and the command's argv (shell quoting rules, no shell).

    Raise ``SystemExit`` with the reason when the name or the command is missing or malformed.
    """
    name, sep, command = spec.partition("=")
    if not sep or not NAME_RE.match(name):
        raise SystemExit(
            f"--variant needs NAME=CMD with NAME of letters, digits, '.', '_', '-' (<= 40), got {spec!r}"
        )
    try:
        argv = tuple(shlex.split(command))
    except ValueError as exc:
        raise SystemExit(f"--variant {name}: cannot split the command {command!r}: {exc}") from exc
    if not argv:
        raise SystemExit(f"--variant {name}: the command is empty")
    return name, argv


def gateway_variants(
    configs: Sequence[str],
    command: tuple[str, ...],
    shared_env: Sequence[str] = (),
    env_variants: Sequence[str] = (),
    command_variants: Sequence[str] = (),
) -> list[GatewayVariant]:
    """Return every gateway to measure: ``gateway`` (when in ``configs``), then the variants in order.

    ``shared_env`` (``KEY=VALUE``) applies to all of them; an ``env_variants`` entry
    (``NAME:KEY=VALUE[,KEY=VALUE]``) runs ``command`` with more environment; a ``command_variants``
    entry (``NAME=CMD``) runs CMD instead. Names must be new: not a built-in configuration, not taken.
    """
    base = parse_env(shared_env)
    variants = [GatewayVariant("gateway", command, base)] if "gateway" in configs else []

    def add(name: str, variant: GatewayVariant, spec: str, option: str) -> None:
        if not NAME_RE.match(name) or name in CONFIGS or any(v.name == name for v in variants):
            taken = ", ".join([*CONFIGS, *(v.name for v in variants)])
            raise SystemExit(f"{option} needs a new NAME (taken: {taken}), got {spec!r}")
        variants.append(variant)

    for spec in env_variants:
        name, _, env = spec.partition(":")
        extra = parse_env([e for e in env.split(",") if e])
        add(name, GatewayVariant(name, command, {**base, **extra}), spec, "--extra-gateway")
    for spec in command_variants:
        name, argv = parse_command_variant(spec)
        add(name, GatewayVariant(name, argv, base), spec, "--variant")
    return variants
