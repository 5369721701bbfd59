"""feed.py: one serialised event shared by every subscriber; slow subscribers skip to the latest."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import orjson

from msa_gateway.observability.feed import LiveFeed, sse
from msa_gateway.observability.metrics import BUCKETS
from msa_gateway.observability.requests import RequestStats


class CountingFeed(LiveFeed):
    """A feed whose state is just the tick number, on a runtime stub that starts no producer."""

    def state(self, now: float) -> dict[str, Any]:
        return {"tick": self.seq}


def feed() -> tuple[CountingFeed, list[str]]:
    """Return a feed and the kinds of the tasks it asked the runtime to start."""
    started: list[str] = []

    def spawn(kind: str, factory: object) -> SimpleNamespace:
        started.append(kind)
        return SimpleNamespace(done=lambda: False)

    runtime = SimpleNamespace(
        metrics=SimpleNamespace(requests=RequestStats(BUCKETS)), spawn=spawn, draining=False
    )
    return CountingFeed(cast(Any, runtime)), started


def test_an_event_is_id_and_one_data_line() -> None:
    assert sse(b'{"a":1}', 7) == b'id: 7\ndata: {"a":1}\n\n'


async def test_subscribers_share_the_bytes_and_a_slow_one_skips_to_the_latest() -> None:
    f, started = feed()
    fast, slow = f.events(), f.events()
    assert await anext(fast) == b"retry: 2000\n\n" and await anext(slow) == b"retry: 2000\n\n"
    assert started == ["dashboard_feed"]  # one producer for both
    first = f.publish()
    assert await anext(fast) is first
    for _ in range(3):
        f.publish()
    latest = await anext(slow)  # missed ticks are skipped, never queued
    assert orjson.loads(latest.split(b"data: ")[1]) == {"tick": 4}
    assert latest is f.latest
    assert f.subscribers == 2
    await fast.aclose()
    await slow.aclose()
    assert f.subscribers == 0


async def test_a_waiting_subscriber_wakes_on_publish_and_ends_on_close_or_its_stop_event() -> None:
    f, _ = feed()
    stopped = asyncio.Event()
    mine, other = f.events(stopped), f.events()
    await anext(mine)
    await anext(other)
    waiting = asyncio.ensure_future(anext(mine))
    await asyncio.sleep(0)
    assert not waiting.done()
    f.publish()
    assert (await waiting) is f.latest
    stopped.set()
    f.wake()
    async for _ in mine:
        raise AssertionError("a stopped subscriber gets nothing more")
    f.close()
    async for _ in other:
        raise AssertionError("a closed feed sends nothing more")
    assert f.subscribers == 0
