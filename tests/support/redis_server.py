"""A real ``redis-server`` on a free loopback port, for integration tests.

Use the fixture by importing it into a test module
(``from tests.support.redis_server import redis_server_fixture  # noqa: F401``) and asking for
``redis_server``; ``stop()``/``start()`` kill and bring back the server on the same port.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from msa_gateway.settings import Settings
from tests.support.procs import find_binary, free_port


class RedisServer:
    """One ``redis-server`` process without persistence, restartable on the same port."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Return ``redis://127.0.0.1:{port}/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def settings(self, **extra: object) -> Settings:
        """Return gateway settings pointing at this server (ignoring the environment's ``.env``)."""
        values: dict[str, object] = {"redis_host": "127.0.0.1", "redis_port": self.port, "redis_url": None}
        values.update(extra)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg,arg-type]

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        if self.proc is not None and self.proc.poll() is None:
            return
        argv = [
            find_binary("redis-server"),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(self.workdir / "redis.log"),
            "--loglevel",
            "warning",
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.proc.poll() is not None:
                log = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server on port {self.port} did not answer PING in {timeout}s")
            time.sleep(0.01)

    def ping(self) -> bool:
        """Return True when the server answers ``PING`` with ``+PONG``."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, kill: bool = True) -> None:
        """Stop the server (SIGKILL by default, like a crash) and wait until it is gone."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def restart(self) -> None:
        """Stop and start again on the same port (all data is lost: no persistence)."""
        self.stop()
        self.start()


@contextlib.contextmanager
def running_redis(workdir: Path) -> Iterator[RedisServer]:
    """Run a ``redis-server`` for the duration of the block."""
    server = RedisServer(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop(kill=False)


@pytest.fixture(name="redis_server")
def redis_server_fixture(tmp_path: Path) -> Iterator[RedisServer]:
    """Yield a fresh ``redis-server`` on a free port; stop it afterwards."""
    with running_redis(tmp_path) as server:
        yield server
