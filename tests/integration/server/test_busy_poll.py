"""BUSY_POLL_US on a real ``msa-gateway run``: a request keeps the process polling (on the CPU) for
the window, then it sleeps again. Read from the process's CPU time in ``/proc``, not from a clock
of the test's: the loop polling shows as CPU the process uses while nothing else happens.
"""

from __future__ import annotations

import asyncio
import time

from bench.procs import cpu_seconds

from tests.support.gateway import gateway_process, raw_request


async def cpu_after(pid: int, start: float, grew: float, timeout: float = 15.0) -> float:
    """Wait until ``pid`` has used ``grew`` seconds of CPU since ``start``; return its CPU time then."""
    deadline = time.monotonic() + timeout
    while (now := cpu_seconds(pid)) - start < grew:
        assert time.monotonic() < deadline, f"only {now - start:.2f} s of CPU in {timeout} s"
        await asyncio.sleep(0.05)
    return now


async def idle_again(pid: int, timeout: float = 15.0) -> None:
    """Wait until ``pid`` uses (almost) no CPU over a quarter of a second."""
    deadline = time.monotonic() + timeout
    while True:
        before = cpu_seconds(pid)
        await asyncio.sleep(0.25)
        if cpu_seconds(pid) - before <= 0.05:
            return
        assert time.monotonic() < deadline, "the process never went back to sleep"


async def test_a_request_keeps_the_process_polling_for_the_window_then_it_sleeps() -> None:
    with gateway_process(BUSY_POLL_US="1000000") as gw:  # a second: long enough to read from /proc
        pid = gw.pid()
        await idle_again(pid)  # start-up is over
        start = cpu_seconds(pid)
        reply = await raw_request(gw.port, b"GET /health/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200 ")
        await cpu_after(pid, start, grew=0.3)  # an idle loop with nothing to do uses ~0
        await idle_again(pid)  # the window passed without traffic: asleep again
