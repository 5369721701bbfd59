"""Is the machine quiet enough to quote a number? CPU time of the whole machine, steal, and the CPU model.

On this shared VM two things make a run's figures worthless without changing anything the benchmark
controls: other processes on the cores (counted as ``other cores`` by ``bench.run``) and CPU *steal*, time
the hypervisor gave to another guest while ours wanted to run (60% was seen for minutes at a time; it can
halve the gateway's req/s while barely moving nginx's). Both are read from ``/proc/stat`` around every
measured run; a run above either limit is marked noisy and its figures are not to be quoted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

from bench.procs import read_text

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
QUIET_BUSY = 0.05  # share of all CPUs busy before start above which the run warns
MAX_OTHER_CORES = 0.15  # cores used by other processes during a measured run above which it is noisy
MAX_STEAL = 0.03  # share of a used core's time stolen during a measured run above which it is noisy


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """Jiffies from one ``cpu`` line of ``/proc/stat``: busy (user, nice, system, irq, softirq), idle
    (idle, iowait) and steal. guest and guest_nice are already inside user and nice, so they are not added."""

    busy: int
    idle: int
    steal: int

    @property
    def total(self) -> int:
        """Return all jiffies of this line."""
        return self.busy + self.idle + self.steal

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.busy - other.busy, self.idle - other.idle, self.steal - other.steal)

    def share(self, part: int) -> float:
        """Return ``part`` over ``total`` (0.0 for an empty interval)."""
        return part / self.total if self.total > 0 else 0.0


def parse_proc_stat(stat: str) -> dict[str, CpuTimes]:
    """Return every ``cpu``/``cpuN`` line of ``/proc/stat`` by name (``cpu`` is all cores together).

    Fields: user nice system idle iowait irq softirq steal guest guest_nice; old kernels print fewer,
    which count as 0. Raise ``ValueError`` when there is no aggregate ``cpu`` line.
    """
    out: dict[str, CpuTimes] = {}
    for line in stat.splitlines():
        if not line.startswith("cpu"):
            continue
        name, *fields = line.split()
        v = [int(f) for f in fields[:8]] + [0] * (8 - len(fields[:8]))
        out[name] = CpuTimes(busy=v[0] + v[1] + v[2] + v[5] + v[6], idle=v[3] + v[4], steal=v[7])
    if "cpu" not in out:
        raise ValueError("no aggregate cpu line in /proc/stat")
    return out


def read_cpu_times() -> dict[str, CpuTimes]:
    """Return ``parse_proc_stat`` of the live ``/proc/stat``."""
    with open("/proc/stat") as f:
        return parse_proc_stat(f.read())


@dataclass(frozen=True, slots=True)
class Interval:
    """What the machine did between two ``/proc/stat`` samples."""

    busy_s: float  # CPU seconds all cores spent busy (steal not included)
    steal_s: float  # CPU seconds stolen from all cores
    steal_share: float  # the worst share of time stolen from one of the watched cores
    busy_share: float  # busy share of all cores


def interval(before: dict[str, CpuTimes], after: dict[str, CpuTimes], cores: Iterable[int] = ()) -> Interval:
    """Compare two samples; ``steal_share`` is the worst of ``cores`` (all cores together when empty)."""
    whole = after["cpu"] - before["cpu"]
    names = [f"cpu{c}" for c in cores if f"cpu{c}" in before and f"cpu{c}" in after] or ["cpu"]
    deltas = [after[n] - before[n] for n in names]
    return Interval(
        busy_s=whole.busy / CLOCK_TICKS,
        steal_s=whole.steal / CLOCK_TICKS,
        steal_share=max(d.share(d.steal) for d in deltas),
        busy_share=whole.share(whole.busy),
    )


def sample(seconds: float = 1.0, cores: Iterable[int] = ()) -> Interval:
    """Return what the machine did over the next ``seconds``."""
    before = read_cpu_times()
    time.sleep(seconds)
    return interval(before, read_cpu_times(), cores)


def wait_until_quiet(timeout: float, cores: Iterable[int] = (), max_steal: float = MAX_STEAL) -> Interval:
    """Sample each second until other work is at most ``QUIET_BUSY`` of all cores and steal at most
    ``max_steal`` of every watched core, or ``timeout`` passes; return the last sample."""
    watched = list(cores)
    deadline = time.monotonic() + timeout
    last = sample(cores=watched)
    while (last.busy_share > QUIET_BUSY or last.steal_share > max_steal) and time.monotonic() < deadline:
        last = sample(cores=watched)
    return last


def cpu_model(cpuinfo: str) -> str:
    """Return the first ``model name`` of ``/proc/cpuinfo`` ('unknown' when there is none, e.g. on ARM)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "model name":
            return value.strip()
    return "unknown"


def idle_policy(driver: str | None, halt_poll_ns: str | None) -> str:
    """Describe how an idle CPU waits: the ``cpuidle`` driver and, under ``haltpoll``, its poll window.

    One-connection figures depend on it more than on anything a proxy does (bench/README.md, "One
    connection and the sleeping vCPU"): a guest that halts at once pays a hypervisor wake-up per wait.
    """
    name = (driver or "").strip() or "none"
    if name != "haltpoll" or halt_poll_ns is None or not halt_poll_ns.strip().isdigit():
        return name
    return f"haltpoll, polls {int(halt_poll_ns) // 1000} µs before halting"


def read_idle_policy() -> str:
    """Return ``idle_policy`` of the live system."""
    return idle_policy(
        read_text("/sys/devices/system/cpu/cpuidle/current_driver"),
        read_text("/sys/module/haltpoll/parameters/guest_halt_poll_ns"),
    )


def read_cpu_model() -> str:
    """Return ``cpu_model`` of the live ``/proc/cpuinfo`` ('unknown' when it cannot be read)."""
    return cpu_model(read_text("/proc/cpuinfo") or "")


def noise(
    other_cores: float | None, steal_share: float | None, max_other: float, max_steal: float
) -> list[str]:
    """Return why a run's figures are noisy (empty when they can be quoted)."""
    reasons = []
    if other_cores is not None and other_cores > max_other:
        reasons.append(f"other processes used {other_cores:.2f} cores (limit {max_other:.2f})")
    if steal_share is not None and steal_share > max_steal:
        reasons.append(f"CPU steal {steal_share:.1%} (limit {max_steal:.1%})")
    return reasons
