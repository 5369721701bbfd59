"""``RequestCycle`` does what uvicorn's cycle does, and ``MessageEvent`` what its ``asyncio.Event`` does."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from msa_gateway.request_cycle import MessageEvent
from tests.unit.test_uvicorn_cycle import Transport, make_cycle, make_uvicorn_cycle


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


# --- RequestCycle: uvicorn's cycle, message for message ------------------------------------

Run = tuple[bytes, bool, list[int], str | None, bool]


async def _drive(cycle: Any, transport: Transport, done: list[int], messages: list[dict[str, Any]]) -> Run:
    """Send ``messages``; return what was written, closed, completed, and the error raised if any."""
    error = None
    try:
        for message in messages:
            await cycle.send(message)
    except RuntimeError as exc:
        error = str(exc)
    return b"".join(transport.writes), transport.closed, done, error, cycle.response_complete


def both(messages: list[dict[str, Any]], **kwargs: Any) -> tuple[Run, Run]:
    async def run() -> tuple[Run, Run]:
        ours = await _drive(*make_cycle(**kwargs), messages)
        theirs = await _drive(*make_uvicorn_cycle(**kwargs), messages)
        return ours, theirs

    return asyncio.run(run())


def start(status: int = 200, *headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http.response.start", "status": status, "headers": list(headers)}


def part(body: bytes = b"", more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": body, "more_body": more}


LENGTH = (b"Content-Length", b"5")
SEQUENCES = [
    pytest.param([start(200, LENGTH), part(b"hello")], {}, id="length"),
    pytest.param([start(200, (b"X-A", b"1")), part(b"he", True), part(b""), part(b"llo")], {}, id="chunked"),
    pytest.param([start(200, LENGTH), part(b"he", True), part(b"llo")], {}, id="length-in-parts"),
    pytest.param([start(200, LENGTH), part(b"hello")], {"method": "HEAD"}, id="head"),
    pytest.param([start(204), part()], {}, id="no-content"),
    pytest.param([start(304, (b"etag", b'"x"')), part()], {}, id="not-modified"),
    pytest.param([start(200, LENGTH), part(b"hello")], {"keep_alive": False}, id="not-kept-alive"),
    pytest.param(
        [start(200, (b"connection", b"Keep-Alive, Close"), LENGTH), part(b"hello")], {}, id="app-closes"
    ),
    pytest.param([start(200, (b"transfer-encoding", b"chunked")), part(b"hi")], {}, id="app-chunks"),
    pytest.param(
        [start(200, LENGTH), part(b"hello")],
        {"default_headers": [(b"server", b"uvicorn"), (b"date", b"Sat, 05 Dec 2026 12:00:00 GMT")]},
        id="defaults",
    ),
    pytest.param([start(200, LENGTH), part(b"toolong")], {}, id="longer-than-length"),
    pytest.param([start(200, LENGTH), part(b"hey")], {}, id="shorter-than-length"),
    pytest.param([start(200, (b"x a", b"1"))], {}, id="bad-name"),
    pytest.param([start(200, (b"x-a", b"1\r\nx: y"))], {}, id="bad-value"),
    pytest.param([part(b"x")], {}, id="body-first"),
    pytest.param([start(200, LENGTH), start(200)], {}, id="start-twice"),
    pytest.param([start(200, LENGTH), part(b"hello"), part(b"more")], {}, id="after-complete"),
]


@pytest.mark.parametrize(("messages", "kwargs"), SEQUENCES)
def test_send_writes_closes_and_fails_exactly_as_uvicorns_cycle(
    messages: list[dict[str, Any]], kwargs: dict[str, Any]
) -> None:
    ours, theirs = both(messages, **kwargs)
    assert ours == theirs


def _apps() -> dict[str, Any]:
    async def fails_first(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("boom")

    async def fails_later(scope: Any, receive: Any, send: Any) -> None:
        await send(start(200, LENGTH))
        raise ValueError("boom")

    async def returns_a_value(scope: Any, receive: Any, send: Any) -> int:
        await send(start(200, LENGTH))
        await send(part(b"hello"))
        return 1

    async def never_starts(scope: Any, receive: Any, send: Any) -> None:
        return None

    async def never_completes(scope: Any, receive: Any, send: Any) -> None:
        await send(start(200, LENGTH))

    async def answers(scope: Any, receive: Any, send: Any) -> None:
        await send(start(200, LENGTH))
        await send(part(b"hello"))

    return {
        f.__name__: f
        for f in (fails_first, fails_later, returns_a_value, never_starts, never_completes, answers)
    }


@pytest.mark.parametrize("name", list(_apps()))
def test_run_asgi_answers_500_or_closes_as_uvicorns_cycle_does(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = _apps()[name]

    async def run(
        cycle: Any, transport: Transport, done: list[int]
    ) -> tuple[bytes, bool, list[int], list[str]]:
        caplog.clear()
        await cycle.run_asgi(app)
        cycle.on_response()  # replaced once the app has returned: a later call does nothing
        return b"".join(transport.writes), transport.closed, done, [r.getMessage() for r in caplog.records]

    async def scenario() -> tuple[Any, Any]:
        return await run(*make_cycle()), await run(*make_uvicorn_cycle())

    with caplog.at_level(logging.ERROR, logger="test"):
        ours, theirs = asyncio.run(scenario())
    assert ours == theirs
    assert ours[2] == ([] if name in {"never_completes", "fails_later"} else [1])  # once, when complete


def test_receive_sends_100_continue_then_the_body_then_a_disconnect_as_uvicorns_cycle_does() -> None:
    async def run(cycle: Any, transport: Transport, _: list[int]) -> tuple[list[Any], bytes]:
        cycle.waiting_for_100_continue = True
        messages = []
        waiting = asyncio.create_task(cycle.receive())
        await asyncio.sleep(0)
        cycle.body += b"part"
        cycle.message_event.set()
        messages.append(await waiting)
        cycle.body += b"end"
        cycle.more_body = False
        cycle.message_event.set()
        messages.append(await cycle.receive())
        cycle.disconnected = True
        messages.append(await cycle.receive())
        return messages, b"".join(transport.writes)

    async def scenario() -> tuple[Any, Any]:
        loop = asyncio.get_running_loop()
        ours = make_cycle("POST")
        ours[0].message_event = MessageEvent(loop)
        return await run(*ours), await run(*make_uvicorn_cycle("POST"))

    ours, theirs = asyncio.run(scenario())
    assert ours == theirs
    assert ours[1] == b"HTTP/1.1 100 Continue\r\n\r\n" and ours[0][-1] == {"type": "http.disconnect"}
