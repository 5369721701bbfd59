"""nginx for the benchmark: render the config templates and run nginx as a non-daemon master."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from bench.procs import Proc, find_binary, start

TEMPLATES = Path(__file__).resolve().parent / "templates"
PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")


def render(template: str, values: Mapping[str, str | int]) -> str:
    """Replace every ``@KEY@`` in ``template``; fail if a placeholder is left over."""
    text = template
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    left = sorted(set(PLACEHOLDER.findall(text)))
    if left:
        raise ValueError(f"unfilled placeholders: {', '.join(left)}")
    return text


def _write_config(workdir: Path, name: str, values: Mapping[str, str | int]) -> Path:
    """Render template ``name`` (with the shared parts) into ``workdir`` and return its path."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "empty").mkdir(exist_ok=True)
    common = {
        "DIR": str(workdir),
        "COMMON": (TEMPLATES / "common.conf").read_text(),
        "HTTP_COMMON": (TEMPLATES / "http_common.conf").read_text(),
    }
    # Shared parts contain @DIR@ themselves: substitute them first, then the rest.
    common["COMMON"] = render(common["COMMON"], {"DIR": str(workdir)})
    common["HTTP_COMMON"] = render(common["HTTP_COMMON"], {"DIR": str(workdir)})
    all_values = {**common, **values}
    for extra in ("backend_locations.conf",):
        (workdir / extra).write_text(render((TEMPLATES / extra).read_text(), all_values))
    path = workdir / f"{name}.conf"
    path.write_text(render((TEMPLATES / f"{name}.conf").read_text(), all_values))
    return path


def _run(name: str, config: Path, workdir: Path, core: int) -> Proc:
    nginx = find_binary("nginx")
    argv = [nginx, "-e", str(workdir / "error.log"), "-p", str(workdir), "-c", str(config)]
    return start(name, argv, workdir, core=core)


def backend_config(workdir: Path, port1: int, port2: int) -> Path:
    """Write the backend config (two ports answering ``{"ok":true}``) into ``workdir``."""
    return _write_config(workdir, "backend", {"PORT1": port1, "PORT2": port2})


def proxy_config(workdir: Path, port: int, port1: int, port2: int) -> Path:
    """Write the reverse-proxy config (``port`` -> round robin over ``port1``/``port2``) into ``workdir``."""
    return _write_config(workdir, "proxy", {"PORT": port, "PORT1": port1, "PORT2": port2})


def start_backend(workdir: Path, port1: int, port2: int, core: int) -> Proc:
    """Start the backend nginx pinned to ``core`` and wait until both ports accept."""
    proc = _run("nginx-backend", backend_config(workdir, port1, port2), workdir, core)
    proc.wait_port(port1)
    proc.wait_port(port2)
    return proc


def start_proxy(workdir: Path, port: int, port1: int, port2: int, core: int) -> Proc:
    """Start nginx as the round-robin reverse proxy pinned to ``core`` and wait until it accepts."""
    proc = _run("nginx-proxy", proxy_config(workdir, port, port1, port2), workdir, core)
    proc.wait_port(port)
    return proc
