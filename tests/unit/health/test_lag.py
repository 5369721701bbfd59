"""Loop lag samples: the worst since a moment, including a stall whose sample is still pending."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from msa_gateway.health.lag import LoopLag


def test_worst_since_looks_only_at_samples_from_then_on() -> None:
    now = [100.0]
    lag = LoopLag(clock=lambda: now[0])
    lag.note(90.0, 2.0)
    lag.note(95.0, 0.3)
    lag.note(99.0, 0.1)
    assert lag.worst_since(94.0) == 0.3
    assert lag.worst_since(96.0) == 0.1
    assert lag.worst_since(99.5) == 0.0
    assert lag.recent(6.0) == 0.3
    assert lag.worst == 2.0


async def test_a_stall_shows_at_once_even_before_the_monitor_wakes() -> None:
    lag = LoopLag(every=0.01)
    task = asyncio.get_running_loop().create_task(lag.run())
    await asyncio.sleep(0)  # one turn: the monitor is asleep, due in 10 ms
    started = time.monotonic()
    time.sleep(0.3)  # the loop is blocked: the monitor cannot take its sample
    assert lag.worst_since(started) >= 0.25
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def test_samples_fill_the_histogram_buckets() -> None:
    lag = LoopLag(clock=lambda: 0.0)
    for lateness in (0.001, 0.004, 0.03, 0.3, 7.0):
        lag.note(0.0, lateness)
    assert lag.counts == [2, 0, 0, 1, 0, 0, 1, 0, 0, 1]  # <=5 ms twice, <=50 ms, <=0.5 s, above 2.5 s
    assert lag.total == pytest.approx(7.335)
