"""wrk: build the command line, run it pinned to a core, and parse its ``--latency`` report."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.procs import find_binary

POST_SCRIPT = Path(__file__).resolve().parent / "post.lua"
POST_BODY_SIZE = 1024

_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_TIME_RE = re.compile(r"^([0-9.]+)(us|ms|s|m|h)$")
_PERCENTILE_RE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+(\S+)\s*$", re.MULTILINE)
_REQUESTS_RE = re.compile(r"^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m|h),", re.MULTILINE)
_RPS_RE = re.compile(r"^Requests/sec:\s+([0-9.]+)\s*$", re.MULTILINE)
_SOCKET_RE = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
)
_NON2XX_RE = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_LATENCY_RE = re.compile(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)\s+", re.MULTILINE)


class WrkParseError(ValueError):
    """wrk printed something this parser does not understand."""


@dataclass(frozen=True, slots=True)
class WrkResult:
    """What one wrk run reports; latencies in milliseconds."""

    requests: int
    duration_s: float
    requests_per_s: float
    latency_avg_ms: float
    latency_max_ms: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    connect_errors: int = 0
    read_errors: int = 0
    write_errors: int = 0
    timeouts: int = 0
    non_2xx_3xx: int = 0

    @property
    def socket_errors(self) -> int:
        """Return the sum of connect, read, write errors and timeouts."""
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts

    @property
    def errors(self) -> int:
        """Return every failed request wrk saw: socket errors plus non-2xx/3xx responses."""
        return self.socket_errors + self.non_2xx_3xx


def parse_time_ms(text: str) -> float:
    """Convert a wrk duration such as ``612.00us``, ``1.23ms`` or ``2.00s`` to milliseconds."""
    m = _TIME_RE.match(text.strip())
    if m is None:
        raise WrkParseError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _TIME_UNITS_MS[m.group(2)]


def parse_wrk_output(text: str) -> WrkResult:
    """Parse the stdout of ``wrk --latency``; raise ``WrkParseError`` when a section is missing."""
    percentiles = {p: parse_time_ms(v) for p, v in _PERCENTILE_RE.findall(text)}
    if set(percentiles) != {"50", "75", "90", "99"}:
        raise WrkParseError("no latency distribution (was wrk run with --latency?)")
    requests = _REQUESTS_RE.search(text)
    rps = _RPS_RE.search(text)
    latency = _LATENCY_RE.search(text)
    if requests is None or rps is None or latency is None:
        raise WrkParseError("no request count, Requests/sec or Latency line in wrk output")
    socket = _SOCKET_RE.search(text)
    connect, read, write, timeout = (int(g) for g in socket.groups()) if socket else (0, 0, 0, 0)
    non2xx = _NON2XX_RE.search(text)
    return WrkResult(
        requests=int(requests.group(1)),
        duration_s=parse_time_ms(requests.group(2) + requests.group(3)) / 1000.0,
        requests_per_s=float(rps.group(1)),
        latency_avg_ms=parse_time_ms(latency.group(1)),
        latency_max_ms=parse_time_ms(latency.group(3)),
        p50_ms=percentiles["50"],
        p75_ms=percentiles["75"],
        p90_ms=percentiles["90"],
        p99_ms=percentiles["99"],
        connect_errors=connect,
        read_errors=read,
        write_errors=write,
        timeouts=timeout,
        non_2xx_3xx=int(non2xx.group(1)) if non2xx else 0,
    )


def wrk_command(
    url: str,
    duration: float,
    connections: int,
    post: bool,
    core: int | None = 0,
    timeout_s: int = 5,
    headers: Sequence[str] = (),
) -> list[str]:
    """Return the wrk command line: one thread, ``connections`` connections, pinned to ``core``.

    Each of ``headers`` (``"Name: value"``) is sent with every request (the POST script keeps them).
    """
    argv = [
        find_binary("wrk"),
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={timeout_s}s",
        "--latency",
    ]
    for header in headers:
        argv += ["-H", header]
    if post:
        argv += ["-s", str(POST_SCRIPT)]
    argv.append(url)
    return ["taskset", "-c", str(core), *argv] if core is not None else argv


def run_wrk(
    url: str, duration: float, connections: int, post: bool, core: int | None = 0, headers: Sequence[str] = ()
) -> WrkResult:
    """Run wrk against ``url`` and return its parsed report; raise with its output if it fails."""
    argv = wrk_command(url, duration, connections, post, core, headers=headers)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
    try:
        return parse_wrk_output(done.stdout)
    except WrkParseError as exc:
        raise WrkParseError(f"{exc}; wrk said:\n{done.stdout}\n{done.stderr}") from None
