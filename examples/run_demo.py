"""Run the demo: four service instances and the gateway in front of them (``make run``).

Starts user-service on 127.0.0.1:8001/8002 and order-service on 127.0.0.1:8011/8012 (the registry
of ``examples/gateway.yaml``), waits until each listens, then starts ``msa_gateway.cli run`` with
``GATEWAY_CONFIG=examples/gateway.yaml`` on ``HOST``/``PORT`` (default 0.0.0.0:8000) and prints curl
examples. Ctrl-C or SIGTERM stops the gateway first, then the services. A demo instance that exits is
reported and the rest keep running (the gateway's health checks take it out of rotation); if the gateway
exits, everything stops with status 1. A port already in use is reported before anything starts, with
exit status 1.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from pydantic import ValidationError

from msa_gateway.errors import ConfigError
from msa_gateway.settings import Settings, load_config

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "gateway.yaml"
DEMO_HOST = "127.0.0.1"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
READY_TIMEOUT = 10.0
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class Child:
    """A process of the demo: its name, the address it listens on, and how to start it."""

    name: str
    host: str
    port: int
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


def demo_services(python: str) -> tuple[Child, ...]:
    """Return the four demo instances, as registered in ``examples/gateway.yaml``."""
    layout = (
        ("user-service-1", "examples.user_service", 8001),
        ("user-service-2", "examples.user_service", 8002),
        ("order-service-1", "examples.order_service", 8011),
        ("order-service-2", "examples.order_service", 8012),
    )
    return tuple(
        Child(
            name,
            DEMO_HOST,
            port,
            (python, "-m", module, "--host", DEMO_HOST, "--port", f"{port}", "--instance", name),
        )
        for name, module, port in layout
    )


def gateway(python: str, host: str, port: int) -> Child:
    """Return the gateway process, configured with the demo registry."""
    env = (("GATEWAY_CONFIG", str(CONFIG)), ("HOST", host), ("PORT", str(port)))
    return Child(name="gateway", host=host, port=port, argv=(python, "-m", "msa_gateway.cli", "run"), env=env)


def port_in_use(host: str, port: int) -> bool:
    """Return whether binding ``host:port`` fails because something already holds it."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: ignore TIME_WAIT
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def connect_host(host: str) -> str:
    """Return the address to reach a server bound to ``host`` (a wildcard means loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def local_url(host: str, port: int) -> str:
    """Return the base URL that reaches a server bound to ``host:port`` from this machine."""
    local = connect_host(host)
    return f"http://[{local}]:{port}" if ":" in local else f"http://{local}:{port}"


def listening(host: str, port: int) -> bool:
    """Return whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((connect_host(host), port), timeout=0.5):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this child when the demo runner dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Demo:
    """The running children, started in order and stopped in reverse order."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._procs: list[tuple[Child, subprocess.Popen[bytes]]] = []
        self._ready: set[int] = set()
        self._reported: set[int] = set()

    def launch(self, child: Child) -> None:
        """Start ``child`` in its own session, to be stopped by ``stop`` (or by our death)."""
        proc = subprocess.Popen(
            child.argv,
            cwd=ROOT,
            env={**os.environ, **dict(child.env)},
            start_new_session=True,  # Ctrl-C reaches only the runner, which stops children in order
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - single-threaded here; nothing else forks
        )
        self._procs.append((child, proc))

    def wait_listening(self) -> None:
        """Wait until every launched child listens; raise RuntimeError if one exits or never listens."""
        deadline = time.monotonic() + START_TIMEOUT
        for child, proc in self._procs:
            if proc.pid in self._ready:
                continue
            while not listening(child.host, child.port):
                if proc.poll() is not None:
                    raise RuntimeError(f"{child.name} exited with status {proc.returncode} before listening")
                if self._stop.is_set():
                    raise InterruptedError
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{child.name} is not listening on port {child.port}")
                self._stop.wait(0.05)
            self._ready.add(proc.pid)
            print(f"  {child.name:<16} listening on {child.host}:{child.port} (pid {proc.pid})", flush=True)

    def newly_exited(self) -> list[tuple[Child, int]]:
        """Return the children that exited since the last call, with their status."""
        dead = []
        for child, proc in self._procs:
            code = proc.poll()
            if code is not None and proc.pid not in self._reported:
                self._reported.add(proc.pid)
                dead.append((child, code))
        return dead

    def stop(self) -> None:
        """SIGTERM every child, newest first; SIGKILL whatever is still alive after the grace period."""
        for _, proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()


def wait_ready(base: str, stop: threading.Event) -> bool:
    """Poll ``{base}/health/ready`` until it answers 200; return False after ``READY_TIMEOUT``."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline and not stop.is_set():
        try:
            with urllib.request.urlopen(f"{base}/health/ready", timeout=1.0) as resp:  # noqa: S310 - our URL
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        stop.wait(0.1)
    return False


def taken_ports(children: Sequence[Child]) -> list[Child]:
    """Return the children whose port is already in use."""
    return [c for c in children if port_in_use(c.host, c.port)]


def gateway_address() -> tuple[str, int]:
    """Return the gateway's HOST and PORT as the gateway will read them (env and ``.env``)."""
    load_config(str(CONFIG))
    settings = Settings()
    return settings.host, settings.port


def usage(base: str) -> str:
    """Return the curl examples for a gateway at ``base``."""
    lines = [
        f"curl {base}/user-service/users",
        f'curl -X POST {base}/user-service/users -H "Content-Type: application/json" '
        '-d \'{"name": "John Doe", "email": "john@example.com"}\'',
        f"curl {base}/order-service/orders",
        f'curl -X POST {base}/order-service/orders -H "Content-Type: application/json" '
        '-d \'{"user_id": 1, "items": [{"product_id": 1, "quantity": 2}]}\'',
        f"curl {base}/services",
        f"curl {base}/services/user-service/health",
        f"curl {base}/health/",
        f"curl {base}/metrics/",
    ]
    return "\n".join(f"  {line}" for line in lines)


def install_handlers(stop: threading.Event) -> Callable[[], None]:
    """Make SIGINT and SIGTERM set ``stop``; return a function that restores the old handlers."""

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, previous in old.items():
            signal.signal(sig, previous)

    return restore


def main() -> int:
    """Run the demo until Ctrl-C/SIGTERM; return the exit status."""
    try:
        host, port = gateway_address()
    except ValidationError as exc:
        err = exc.errors()[0]
        name = "_".join(str(p) for p in err["loc"]).upper()
        print(f"run_demo: environment: {name}: {err['msg']}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"run_demo: {exc}", file=sys.stderr)
        return 1
    services = demo_services(sys.executable)
    gw = gateway(sys.executable, host, port)
    busy = taken_ports([*services, gw])
    if busy:
        for child in busy:
            print(
                f"run_demo: port {child.port} ({child.name}) is already in use on {child.host}",
                file=sys.stderr,
            )
        print("run_demo: stop what holds it (another `make run`?) and try again", file=sys.stderr)
        return 1

    stop = threading.Event()
    restore = install_handlers(stop)
    demo = Demo(stop)
    status = 0
    try:
        print("Starting the demo services:", flush=True)
        for child in services:
            demo.launch(child)
        demo.wait_listening()
        print(
            f"Starting the gateway on {host}:{port} with GATEWAY_CONFIG={CONFIG.relative_to(ROOT)}",
            flush=True,
        )
        demo.launch(gw)
        demo.wait_listening()
        if wait_ready(local_url(host, port), stop):
            state = "The gateway is ready."
        else:
            state = (
                f"The gateway listens but is not ready after {READY_TIMEOUT:.0f}s (see GET /health/ready)."
            )
        print(f"\n{state} Try:\n{usage(f'http://localhost:{port}')}\n", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        while not stop.wait(0.2):
            dead = demo.newly_exited()
            for child, code in dead:
                print(f"run_demo: {child.name} exited with status {code}", file=sys.stderr, flush=True)
            if any(child is gw for child, _ in dead):
                status = 1
                break
    except InterruptedError:
        pass
    except RuntimeError as exc:
        print(f"run_demo: {exc}; stopping", file=sys.stderr)
        status = 1
    finally:
        print("Stopping the demo...", flush=True)
        demo.stop()
        restore()
    print("Stopped.", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
