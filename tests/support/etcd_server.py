"""Run a real single-node ``etcd`` (Debian etcd-server) on free loopback ports for tests.

Usage::

    with etcd_server() as etcd:          # started and healthy
        etcd.url                         # http://127.0.0.1:PORT
        etcd.kill(); etcd.start()        # outage: same ports and data dir

The data dir lives in ``/dev/shm`` when possible (etcd 3.4 has no ``--unsafe-no-fsync``) and
short raft timers make a fresh member leader in well under a second.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.support.procs import find_binary, free_port


class EtcdServer:
    """One etcd process; ``start``/``stop``/``kill`` may be called repeatedly (ports and data kept)."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.client_port = free_port()
        self.peer_port = free_port()
        self.binary = find_binary("etcd")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Return the client URL."""
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        """Return whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def argv(self) -> list[str]:
        """Return the command line."""
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            self.binary,
            "--name=test",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=test={peer}",
            "--heartbeat-interval=10",
            "--election-timeout=100",
            "--logger=zap",
            "--log-outputs=stderr",
            "--log-level=warn",
        ]

    def start(self, timeout: float = 15.0) -> None:
        """Start etcd and wait until ``/health`` says it is healthy."""
        if self.running:
            raise RuntimeError("etcd is already running")
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self._proc.returncode}: {self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.02)
        self.kill()
        raise TimeoutError(f"etcd not healthy after {timeout}s: {self.log_tail()}")

    def healthy(self) -> bool:
        """Return whether etcd answers ``/health`` with ``{"health": "true"}``."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=0.5) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        """Stop etcd gracefully (SIGTERM, then SIGKILL after 5 s)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Kill etcd at once (SIGKILL), as a crash would."""
        self._end(signal.SIGKILL)

    def pause(self) -> None:
        """Freeze etcd (SIGSTOP): connections stay open but nothing answers, like a partition."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo ``pause`` (SIGCONT)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop (if running) and start again on the same ports and data dir."""
        self.stop()
        self.start()

    def _end(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(sig)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def log_tail(self, n: int = 2000) -> str:
        """Return the end of etcd's log."""
        try:
            return self.log_path.read_text("utf-8", "replace")[-n:]
        except OSError:
            return "(no log)"


def _scratch_dir() -> Path:
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="msa-etcd-", dir=base))


@contextlib.contextmanager
def etcd_server() -> Iterator[EtcdServer]:
    """Start a fresh etcd with its own data dir; stop it and remove the data afterwards."""
    scratch = _scratch_dir()
    server = EtcdServer(scratch / "data", scratch / "etcd.log")
    try:
        server.start()
        yield server
    finally:
        server.kill()
        shutil.rmtree(scratch, ignore_errors=True)
