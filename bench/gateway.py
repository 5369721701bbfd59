"""The gateway under test: a generated YAML config and ``msa-gateway run`` with one worker on one core."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.procs import REPO, Proc, http_request, start, wait_ready

SERVICE = "bench"
DROPPED_ENV = frozenset({"DEBUG", "LOG_LEVEL", "SERVICE_DISCOVERY_TYPE", "PYTHONPATH"})


@dataclass(frozen=True, slots=True)
class GatewayLaunch:
    """How to start the gateway: the command, and where its stdout (the access log) goes."""

    command: tuple[str, ...]
    log_to_file: bool = True
    env: Mapping[str, str] = field(default_factory=dict)


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    """Turn ``KEY=VALUE`` strings into a mapping; fail on one without ``=``."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def gateway_command() -> tuple[str, ...]:
    """Return ``<repo>/.venv/bin/msa-gateway run`` (or the one on PATH) as the default command."""
    venv = REPO / ".venv" / "bin" / "msa-gateway"
    exe = str(venv) if venv.exists() else shutil.which("msa-gateway") or str(venv)
    return (exe, "run")


def gateway_config(
    ports: Sequence[int],
    service: str = SERVICE,
    health_path: str | None = "/health",
    read_timeout: float = 30.0,
) -> dict[str, Any]:
    """Return the YAML document registering ``ports`` on 127.0.0.1 as instances of ``service``."""
    svc: dict[str, Any] = {
        "instances": [{"host": "127.0.0.1", "port": p} for p in ports],
        "timeouts": {"connect": 2.0, "read": read_timeout},
        "health_check": {"path": health_path, "interval": 5.0, "timeout": 2.0},
    }
    return {"services": {service: svc}}


def write_config(workdir: Path, document: Mapping[str, Any]) -> Path:
    """Write ``document`` as ``gateway.yaml`` in ``workdir`` and return the path."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(dict(document), sort_keys=False))
    return path


def gateway_env(
    inherited: Mapping[str, str], extra: Mapping[str, str], config: Path, port: int
) -> dict[str, str]:
    """Return the environment of a gateway under test: ours minus what changes its behaviour, plus
    ``extra``, plus where it listens and which config it reads (the same for every variant).

    PYTHONPATH is dropped too: it would make another checkout's command import this checkout's package.
    """
    env = {k: v for k, v in inherited.items() if k not in DROPPED_ENV}
    env.update(extra)
    env.update({"GATEWAY_CONFIG": str(config), "HOST": "127.0.0.1", "PORT": str(port)})
    return env


def start_gateway(
    workdir: Path,
    config: Path,
    port: int,
    core: int | None,
    launch: GatewayLaunch,
    ready_path: str,
    timeout: float = 20.0,
    headers: Mapping[str, str] | None = None,
) -> Proc:
    """Start the gateway and wait until ``ready_path`` answers 200 through it (the backends are healthy).

    Raise ``StartError`` (with the tail of its stderr/stdout) when it exits or never gets ready.
    """
    env = gateway_env(os.environ, launch.env, config, port)
    stdout = workdir / "gateway-stdout.log" if launch.log_to_file else Path(os.devnull)
    # cwd is the temp dir so that a developer's .env in the repository cannot change the settings.
    proc = start("gateway", launch.command, workdir, core=core, env=env, stdout=stdout, cwd=workdir)
    proc.wait_port(port, timeout=timeout)
    return wait_ready(proc, f"http://127.0.0.1:{port}{ready_path}", timeout, headers)


def metrics_requests_total(port: int) -> float | None:
    """Return the sum of ``gateway_requests_total`` samples from ``/metrics`` (None if unavailable)."""
    status, body = http_request(f"http://127.0.0.1:{port}/metrics")
    if status != 200:
        return None
    total, seen = 0.0, False
    for line in body.decode("utf-8", "replace").splitlines():
        if line.startswith("gateway_requests_total{") or line.startswith("gateway_requests_total "):
            total += float(line.rsplit(" ", 1)[1])
            seen = True
    return total if seen else None


def count_lines(path: Path) -> int:
    """Return the number of lines in the file at ``path`` (0 when missing)."""
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def json_body_ok(body: bytes) -> bool:
    """Return whether ``body`` is the backend's ``{"ok": true}``."""
    try:
        return bool(json.loads(body) == {"ok": True})
    except ValueError:
        return False
