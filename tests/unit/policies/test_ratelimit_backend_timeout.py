"""The Redis backend's deadline: a busy event loop is not a Redis outage, a silent Redis is.

No server here: ``_within_timeout`` is given the work directly (a coroutine standing for the
pipeline), so the test controls when its answer arrives relative to the loop's timers.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from msa_gateway.policies.ratelimit_redis import RedisBackend

TIMEOUT = 0.05


def backend() -> RedisBackend:
    return RedisBackend(Redis(), TIMEOUT, time.monotonic, lambda up: None)  # never connects: unused


async def parsed_after(answer: asyncio.Future[list[list[int]]]) -> list[list[int]]:
    """Stand for redis-py: the answer is read, then parsed over a couple of loop turns."""
    got = await answer
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    return got


async def test_an_answer_that_came_while_the_loop_was_busy_is_read_not_counted_as_an_outage() -> None:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[list[list[int]]] = loop.create_future()

    def busy_then_answer() -> None:
        time.sleep(TIMEOUT / 5)  # the loop is busy past the deadline, though not starved by half a timeout
        loop.call_soon(answer.set_result, [[1, 0]])  # the answer arrived meanwhile

    loop.call_later(TIMEOUT * 0.95, busy_then_answer)
    assert await backend()._within_timeout(parsed_after(answer)) == [[1, 0]]


async def test_a_silent_redis_times_out_after_the_timeout() -> None:
    never: asyncio.Future[list[list[int]]] = asyncio.get_running_loop().create_future()
    started = time.perf_counter()
    with pytest.raises(TimeoutError):
        await backend()._within_timeout(parsed_after(never))
    assert TIMEOUT <= time.perf_counter() - started < 2 * TIMEOUT + 0.2
