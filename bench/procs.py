"""Processes for the benchmark: start pinned to a core, wait for a port, read CPU time and RSS from /proc,
and one plain HTTP request for sanity checks."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Return whether something accepts connections on ``host:port``."""
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def parse_stat_cpu(stat: str) -> int:
    """Return utime + stime in clock ticks from the text of ``/proc/<pid>/stat``."""
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(fields[11]) + int(fields[12])


def parse_stat_ppid(stat: str) -> int:
    """Return the parent pid from the text of ``/proc/<pid>/stat``."""
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def parse_vmrss_kib(status: str) -> int:
    """Return VmRSS in KiB from the text of ``/proc/<pid>/status`` (0 when absent)."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children_cpu_seconds() -> float:
    """Return the CPU seconds used by this process's waited-for children (wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def process_tree(pid: int) -> list[int]:
    """Return ``pid`` and all its living descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = read_text(f"/proc/{entry}/stat")
        if stat is not None:
            children.setdefault(parse_stat_ppid(stat), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, ()))
    return tree


def cpu_seconds(pid: int) -> float:
    """Return the CPU time (user + system) used so far by ``pid`` and its living descendants."""
    ticks = 0
    for p in process_tree(pid):
        stat = read_text(f"/proc/{p}/stat")
        if stat is not None:
            ticks += parse_stat_cpu(stat)
    return ticks / CLOCK_TICKS


def rss_bytes(pids: Sequence[int]) -> int:
    """Return the summed resident set size of ``pids`` in bytes (see ``process_tree``)."""
    total = 0
    for p in pids:
        status = read_text(f"/proc/{p}/status")
        if status is not None:
            total += parse_vmrss_kib(status) * 1024
    return total


def http_request(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 2.0,
) -> tuple[int, bytes]:
    """Return the status and body of one request to ``url`` (status 0 when nothing answered)."""
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())
    except OSError:
        return 0, b""


def find_binary(name: str) -> str:
    """Return the path of ``name`` on PATH or in the sbin directories; fail clearly when missing."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/usr/local/bin:/sbin")
    if path is None:
        raise RuntimeError(f"{name} is not installed: run `make deps`")
    return path


def tail(path: Path, lines: int = 20) -> str:
    """Return the last ``lines`` lines of the file at ``path`` ('' when missing)."""
    try:
        text = path.read_text("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class Proc:
    """A started process with its log files; ``stop()`` ends it."""

    name: str
    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    @property
    def pid(self) -> int:
        """Return the process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """Return whether the process is still running."""
        return self.popen.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """End the process: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)

    def wait_port(self, port: int, timeout: float = 20.0) -> None:
        """Block until ``port`` accepts; raise with the stderr tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise StartError(self, f"exited with code {self.popen.returncode} before listening on {port}")
            if port_open(port):
                return
            time.sleep(0.02)
        raise StartError(self, f"nothing listening on 127.0.0.1:{port} after {timeout:.0f}s")


def wait_ready(proc: Proc, url: str, timeout: float = 20.0, headers: Mapping[str, str] | None = None) -> Proc:
    """Block until a GET of ``url`` answers 200; on failure stop ``proc`` and raise ``StartError``."""
    deadline = time.monotonic() + timeout
    status, body = 0, b""
    while time.monotonic() < deadline:
        status, body = http_request(url, headers=headers)
        if status == 200:
            return proc
        if not proc.alive():
            break
        time.sleep(0.1)
    proc.stop()
    raise StartError(proc, f"never answered 200 on {url} (last: {status} {body[:200]!r})")


class StartError(RuntimeError):
    """A process did not start; the message carries the tail of its stderr."""

    def __init__(self, proc: Proc, reason: str) -> None:
        self.proc = proc
        self.reason = reason
        out = tail(proc.stderr) or tail(proc.stdout) or "(no output)"
        super().__init__(f"{proc.name} {reason}; last lines of {proc.stderr}:\n{out}")


def start(
    name: str,
    argv: Sequence[str],
    logdir: Path,
    core: int | None = None,
    env: Mapping[str, str] | None = None,
    stdout: Path | None = None,
    cwd: Path = REPO,
) -> Proc:
    """Start ``argv`` (pinned to ``core`` with taskset), logging to files in ``logdir``."""
    full = ["taskset", "-c", str(core), *argv] if core is not None else list(argv)
    out_path = stdout or logdir / f"{name}.out"
    err_path = logdir / f"{name}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        popen = subprocess.Popen(full, stdout=out, stderr=err, env=dict(env or os.environ), cwd=cwd)
    return Proc(name=name, popen=popen, stdout=out_path, stderr=err_path)
