"""The Redis watch stops when cancelled, even if the client swallows the cancellation (redis-py #2551)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from msa_gateway.discovery.redis import RedisProvider


class SwallowingPubSub:
    """A pub/sub whose read timeout eats a cancellation that arrives while it waits."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.calls = 0

    async def get_message(self, ignore_subscribe_messages: bool = False, timeout: float = 0.0) -> Any:
        self.calls += 1
        self.waiting.set()
        try:
            await asyncio.sleep(timeout)
        except asyncio.CancelledError:
            return None  # the bug: the cancellation is lost
        return None


async def test_a_swallowed_cancellation_still_ends_the_wait() -> None:
    provider = RedisProvider(Redis(port=1))
    pubsub = SwallowingPubSub()
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(provider._wait(pubsub, loop.time() + 30, None))  # type: ignore[arg-type]
    await pubsub.waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert pubsub.calls == 1
    await provider.aclose()
