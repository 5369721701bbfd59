"""``MessageEvent``: what uvicorn's cycle does with an ``asyncio.Event``, the compiled event does alike."""

from __future__ import annotations

import asyncio

import pytest

from msa_gateway.http_connection import MessageEvent


async def test_wait_returns_at_once_when_set_and_clear_resets_the_flag() -> None:
    event = MessageEvent(asyncio.get_running_loop())
    assert not event.is_set()
    event.set()
    assert event.is_set() and await event.wait() is True
    event.clear()
    assert not event.is_set()


async def test_set_wakes_every_waiter_in_a_later_turn_and_later_waits_return_at_once() -> None:
    event = MessageEvent(asyncio.get_running_loop())
    woken: list[int] = []

    async def waiter(n: int) -> None:
        await event.wait()
        woken.append(n)

    tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
    await asyncio.sleep(0)  # all three wait now
    assert woken == []
    event.set()
    assert woken == []  # like asyncio's: the waiters resume when the loop runs them
    await asyncio.gather(*tasks)
    assert woken == [0, 1, 2]


async def test_a_cancelled_waiter_is_cancelled_and_does_not_stop_set_waking_the_others() -> None:
    event = MessageEvent(asyncio.get_running_loop())
    gone = asyncio.create_task(event.wait())
    stays = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    event.set()
    assert await asyncio.wait_for(stays, 1) is True


async def test_set_twice_and_a_wait_after_clear_waits_again() -> None:
    event = MessageEvent(asyncio.get_running_loop())
    event.set()
    event.set()
    event.clear()
    waiting = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    event.set()
    assert await waiting is True
