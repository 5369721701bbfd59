"""Drive ``tests.support.backend_app`` as a real process: start, kill, restart, control.

with BackendProcess("a") as a:            # free port, waits until it listens
    a.control(mode="hang")                # or health=503, delay=0.5, mode="slow"
    a.kill()                              # SIGKILL
    a.restart()                           # same port again
    assert a.counts() == {"req-1": 1}

@pytest.fixture
def backends() -> Iterator[list[BackendProcess]]:
    with running_backends("a", "b") as started:
        yield started
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from msa_gateway.model import Instance
from tests.support.backend_app import PATTERN
from tests.support.procs import PY, REPO, free_port, python_env, wait_port


def pattern_sha256(n: int) -> str:
    """Return the sha256 of the ``n`` bytes ``/bytes?n=`` serves, without building them."""
    sha = hashlib.sha256()
    for _ in range(n // len(PATTERN)):
        sha.update(PATTERN)
    sha.update(PATTERN[: n % len(PATTERN)])
    return sha.hexdigest()


class BackendProcess:
    """One ``backend_app`` process on 127.0.0.1, restartable on the same port."""

    def __init__(self, name: str = "backend", port: int | None = None, startup_timeout: float = 15.0) -> None:
        self.name = name
        self.host = "127.0.0.1"
        self.port = port if port is not None else free_port()
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        fd, path = tempfile.mkstemp(prefix=f"backend-{name}-", suffix=".log")
        os.close(fd)
        self.log = Path(path)

    @property
    def url(self) -> str:
        """Return ``http://127.0.0.1:port``."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Return whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def instance(self, **fields: Any) -> Instance:
        """Return an ``Instance`` pointing at this backend (``id`` defaults to the name)."""
        return Instance(**{"id": self.name, "host": self.host, "port": self.port, **fields})

    def spawn(self) -> None:
        """Start the process without waiting (see ``wait_ready``)."""
        if self.running:
            raise RuntimeError(f"backend {self.name} is already running")
        argv = [PY, "-m", "tests.support.backend_app", "--port", str(self.port), "--name", self.name]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, env=python_env(), cwd=REPO, stdout=out, stderr=subprocess.STDOUT
            )

    def wait_ready(self) -> None:
        """Block until the process listens; fail with its log if it dies or times out."""
        try:
            wait_port(self.port, timeout=self.startup_timeout, proc=self.proc)
        except (RuntimeError, TimeoutError) as exc:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(
                f"backend {self.name} on port {self.port} did not start: {exc}\n{tail}"
            ) from exc

    def start(self) -> BackendProcess:
        """Start the process and wait until it listens."""
        self.spawn()
        self.wait_ready()
        return self

    def kill(self) -> None:
        """Kill the process with SIGKILL and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop gracefully with SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> BackendProcess:
        """Stop (if running) and start again on the same port; runtime state starts fresh."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the process and remove its log."""
        self.stop()
        self.log.unlink(missing_ok=True)

    def __enter__(self) -> BackendProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes]:
        """Send one request straight to the backend; return status and body."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def control(self, **state: Any) -> dict[str, Any]:
        """POST ``state`` (health, mode, delay, clear_counts) to ``/__control``; return the new state."""
        status, body = self.request(
            "POST", "/__control", orjson.dumps(state), {"Content-Type": "application/json"}
        )
        if status != 200:
            raise RuntimeError(f"backend {self.name} refused control {state}: {status} {body!r}")
        result: dict[str, Any] = orjson.loads(body)
        return result

    def counts(self) -> dict[str, int]:
        """Return how many data requests arrived per ``X-Request-ID``."""
        return dict(self._count()["counts"])

    def total(self) -> int:
        """Return how many data requests arrived (with or without a request id)."""
        return int(self._count()["total"])

    def _count(self) -> dict[str, Any]:
        status, body = self.request("GET", "/__count")
        if status != 200:
            raise RuntimeError(f"backend {self.name} /__count answered {status}")
        result: dict[str, Any] = orjson.loads(body)
        return result


@contextlib.contextmanager
def running_backends(*names: str) -> Iterator[list[BackendProcess]]:
    """Start one backend per name in parallel; stop them all on exit."""
    with contextlib.ExitStack() as stack:
        backends = [BackendProcess(name) for name in names]
        for backend in backends:
            stack.callback(backend.close)
            backend.spawn()
        for backend in backends:
            backend.wait_ready()
        yield backends
