"""Python peers measured in the same run as the gateway: where it stands among Python servers and proxies.

- ``bare-asgi``: uvicorn answering ``{"ok":true}`` itself (``bare_asgi.py``): the host's Python floor;
- ``aiohttp-proxy``: a bare ASGI callable forwarding through one ``aiohttp`` session (``aiohttp_proxy.py``);
- ``proxy.py``: PyPI ``proxy.py``'s reverse proxy core with a route plugin (``proxypy_routes.py``);
- ``callback-proxy``: the least a Python proxy does, in parser callbacks with no task (``callback_proxy.py``):
  what two HTTP exchanges cost in Python, the floor under every Python proxy in the table.

Each runs as one process tree pinned to the proxy core, like the gateway, with access logs off. A peer is in
the default configurations only when the Python modules it needs import in this interpreter (``make venv``
installs them with the dev extras); asking for a missing one by name is an error.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.procs import Proc, start, wait_ready

UPSTREAMS_ENV = "BENCH_UPSTREAMS"  # host:port,host:port of the backends, for the peers that forward
UVICORN = (
    "-m", "uvicorn", "--host", "127.0.0.1", "--port", "{port}",
    "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """How to start one peer: the modules it needs, the pip package(s) that bring them, and the arguments
    after ``python`` (``{port}`` stands for the port it listens on)."""

    name: str
    modules: tuple[str, ...]
    packages: str
    args: tuple[str, ...]


PEER_SPECS = (
    PeerSpec(
        "bare-asgi",
        ("uvicorn", "uvloop", "httptools"),
        "uvicorn uvloop httptools",
        (*UVICORN, "--lifespan", "off", "bench.peers.bare_asgi:app"),
    ),
    PeerSpec(
        "aiohttp-proxy",
        ("uvicorn", "uvloop", "httptools", "aiohttp"),
        "uvicorn uvloop httptools aiohttp",
        (*UVICORN, "--factory", "bench.peers.aiohttp_proxy:create_app"),
    ),
    PeerSpec(
        "proxy.py",
        ("proxy",),
        "proxy.py",
        # Threaded: the default threadless mode crashed under 64 keep-alive connections (see bench/README.md).
        (
            "-m", "proxy", "--hostname", "127.0.0.1", "--port", "{port}",
            "--enable-reverse-proxy", "--plugins", "bench.peers.proxypy_routes.BenchRoutes",
            "--threaded", "--num-acceptors", "1", "--num-workers", "1", "--log-level", "WARNING",
        ),
    ),
    PeerSpec(
        "callback-proxy",
        ("uvloop", "httptools"),
        "uvloop httptools",
        ("-m", "bench.peers.callback_proxy", "--port", "{port}"),
    ),
)  # fmt: skip
PEER_NAMES = tuple(p.name for p in PEER_SPECS)


def spec(name: str) -> PeerSpec:
    """Return the peer called ``name``; ``KeyError`` for an unknown one."""
    for p in PEER_SPECS:
        if p.name == name:
            return p
    raise KeyError(name)


def module_installed(module: str) -> bool:
    """Return whether ``module`` can be imported by this interpreter (without importing it)."""
    return importlib.util.find_spec(module) is not None


def missing_modules(name: str, installed: Callable[[str], bool] = module_installed) -> list[str]:
    """Return the modules peer ``name`` needs that are not installed."""
    return [m for m in spec(name).modules if not installed(m)]


def select_configs(
    requested: str | None,
    builtin: Sequence[str],
    installed: Callable[[str], bool] = module_installed,
) -> tuple[list[str], list[str]]:
    """Return the configurations to measure and notes about peers left out.

    ``requested`` is the ``--configs`` value (comma-separated) or None for the default: every built-in
    configuration and every peer whose modules are installed. Raise ``SystemExit`` naming the problem for an
    unknown name or a requested peer that is not installed.
    """
    known = [*builtin, *PEER_NAMES]
    if requested is None:
        chosen, notes = list(builtin), []
        for name in PEER_NAMES:
            missing = missing_modules(name, installed)
            if missing:
                notes.append(
                    f"peer {name} left out: module(s) {', '.join(missing)} not installed (make venv)"
                )
            else:
                chosen.append(name)
        return chosen, notes
    chosen = [c.strip() for c in requested.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in known]
    if unknown:
        raise SystemExit(f"unknown configuration(s): {', '.join(unknown)} (known: {', '.join(known)})")
    for name in (c for c in chosen if c in PEER_NAMES):
        missing = missing_modules(name, installed)
        if missing:
            raise SystemExit(
                f"peer {name} needs module(s) {', '.join(missing)}: pip install {spec(name).packages} "
                "(make venv installs them with the dev extras)"
            )
    return chosen, []


def peer_command(name: str, port: int, python: str = sys.executable) -> list[str]:
    """Return the argv that starts peer ``name`` on 127.0.0.1:``port``."""
    return [python, *(a.replace("{port}", str(port)) for a in spec(name).args)]


def start_peer(
    name: str, workdir: Path, port: int, backends: Sequence[int], core: int | None, ready_path: str
) -> Proc:
    """Start peer ``name`` with the backends in ``BENCH_UPSTREAMS`` (cwd: the repository, so ``python -m``
    finds ``bench.peers``) and wait until ``ready_path`` answers 200."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, UPSTREAMS_ENV: ",".join(f"127.0.0.1:{p}" for p in backends)}
    proc = start(name, peer_command(name, port), workdir, core=core, env=env)
    proc.wait_port(port)
    return wait_ready(proc, f"http://127.0.0.1:{port}{ready_path}")
