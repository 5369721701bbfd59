"""Start and stop real processes on 127.0.0.1 for integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


_HANDED_OUT: set[int] = set()  # ports free_port() returned: never twice, as a port may not be bound yet


def _ephemeral_low() -> int:
    """Return the first port the kernel gives out for outgoing connections (``ip_local_port_range``)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_EPHEMERAL_LOW = _ephemeral_low()
_FIRST = 10000  # below it: ports other services on the machine may expect to be theirs


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago and was not returned before.

    A port is handed out before its process binds it; the kernel may offer it again meanwhile,
    and two servers of one test on one port would answer for each other. So ports come from
    below the kernel's ephemeral range: an outgoing connection (a gateway's to Redis, a probe
    waiting for a port) never takes one of them as its own side in the meantime, and a probe
    never connects to itself on a port nothing listens on yet.
    """
    span = _EPHEMERAL_LOW - _FIRST
    start = random.randrange(span)
    for i in range(span):
        port = _FIRST + (start + i) % span
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port between {_FIRST} and {_EPHEMERAL_LOW}")


def listening_inodes(port: int) -> set[str]:
    """Return the socket inodes listening on TCP ``port`` (any address), from ``/proc/net/tcp{,6}``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(inode)
    return inodes


def listens_on(pid: int, port: int) -> bool:
    """Return whether process ``pid`` or one of its descendants holds a socket listening on ``port``."""
    wanted = {f"socket:[{inode}]" for inode in listening_inodes(port)}
    todo = [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{current}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        return True
        with contextlib.suppress(OSError):
            todo += [int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
    return False


def wait_port(
    port: int, host: str = "127.0.0.1", timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until something accepts on ``host:port``; fail early if ``proc`` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0 and s.getsockname() != s.getpeername():
                return  # (a probe from the port itself connects to itself: nothing listens yet)
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


async def await_port(port: int, host: str = "127.0.0.1", timeout: float = 15.0) -> None:
    """Wait, without blocking the loop, until something accepts on ``host:port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, w = await asyncio.open_connection(host, port)
            w.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


def find_binary(*names: str) -> str:
    """Return the path of the first of ``names`` found on PATH or in /usr/sbin; fail clearly."""
    for name in names:
        path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/usr/local/bin")
        if path:
            return path
    raise RuntimeError(f"none of {names} is installed: run `make deps`")


def python_env(**extra: str) -> dict[str, str]:
    """Return an environment in which ``python -m`` finds the package and the tests."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


@contextlib.contextmanager
def running(
    argv: Sequence[str],
    port: int | None = None,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    timeout: float = 20.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` for the duration of the block; wait for ``port``; kill it afterwards."""
    out = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        list(argv), env=env or python_env(), stdout=out, stderr=subprocess.STDOUT, cwd=REPO
    )
    try:
        if port is not None:
            wait_port(port, timeout=timeout, proc=proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if log is not None and hasattr(out, "close"):
            out.close()


PY = sys.executable
