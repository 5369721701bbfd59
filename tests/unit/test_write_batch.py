"""``WriteBatch``: writes held to the end of a loop turn while other requests are in flight, in order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from msa_gateway.write_batch import DIRECT, SHARED_FROM, WriteBatch


class Load:
    def __init__(self, in_flight: int) -> None:
        self.in_flight = in_flight


class Transport:
    """Records its writes into a log shared with other transports, to see the order across them."""

    def __init__(self, name: str, log: list[tuple[str, bytes]]) -> None:
        self.name = name
        self.log = log
        self.closing = False

    def write(self, data: bytes) -> None:
        self.log.append((self.name, data))

    def is_closing(self) -> bool:
        return self.closing


class BrokenTransport(Transport):
    def write(self, data: bytes) -> None:
        raise RuntimeError("unable to perform operation on a closed handler")


class Loop:
    """Stands in for the running loop: records what ``call_soon`` was given."""

    def __init__(self) -> None:
        self.soon: list[Callable[[], Any]] = []

    def call_soon(self, callback: Callable[[], Any]) -> None:
        self.soon.append(callback)

    def is_closed(self) -> bool:
        return False


@pytest.fixture
def loop(monkeypatch: pytest.MonkeyPatch) -> Loop:
    fake = Loop()
    monkeypatch.setattr(asyncio, "get_running_loop", lambda: fake)  # as write_batch looks it up
    return fake


def test_with_fewer_requests_in_flight_a_write_goes_out_at_once(loop: Loop) -> None:
    out: list[tuple[str, bytes]] = []
    batch = WriteBatch(Load(SHARED_FROM - 1))
    batch.write(Transport("a", out), b"1")
    assert out == [("a", b"1")] and batch.held == 0 and loop.soon == []


def test_without_a_load_every_write_goes_out_at_once(loop: Loop) -> None:
    out: list[tuple[str, bytes]] = []
    DIRECT.write(Transport("a", out), b"1")
    DIRECT.write(Transport("b", out), b"2")
    assert out == [("a", b"1"), ("b", b"2")] and loop.soon == []


def test_under_load_writes_wait_for_one_flush_per_turn_and_keep_their_order(loop: Loop) -> None:
    out: list[tuple[str, bytes]] = []
    batch = WriteBatch(Load(SHARED_FROM))
    a, b = Transport("a", out), Transport("b", out)
    batch.write(a, b"head")
    batch.write(b, b"other")
    batch.write(a, b"body")
    assert out == [] and batch.held == 3
    assert loop.soon == [batch.flush]  # scheduled once, by the first write of the turn
    loop.soon.pop()()
    assert out == [("a", b"head"), ("b", b"other"), ("a", b"body")] and batch.held == 0
    batch.write(a, b"next turn")
    assert loop.soon == [batch.flush] and out[-1] == ("a", b"body")


def test_a_transport_closed_meanwhile_gets_nothing_and_a_broken_one_holds_back_no_other(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    out: list[tuple[str, bytes]] = []
    batch = WriteBatch(Load(SHARED_FROM + 2))
    gone, broken, fine = Transport("gone", out), BrokenTransport("broken", out), Transport("fine", out)
    batch.write(gone, b"1")
    batch.write(broken, b"2")
    batch.write(fine, b"3")
    gone.closing = True
    with caplog.at_level(logging.ERROR, "msa_gateway.server"):
        batch.flush()
    assert out == [("fine", b"3")]
    assert [r.message for r in caplog.records] == ["held_write_failed"]


def test_an_early_flush_sends_everything_and_the_scheduled_one_finds_nothing(loop: Loop) -> None:
    out: list[tuple[str, bytes]] = []
    batch = WriteBatch(Load(SHARED_FROM))
    batch.write(Transport("a", out), b"1")
    batch.flush()
    assert out == [("a", b"1")]
    loop.soon.pop()()
    assert out == [("a", b"1")] and batch.held == 0


def test_the_flush_runs_after_the_callbacks_already_due_on_a_real_loop() -> None:
    """Held through one turn: a callback scheduled before the write runs first, one after it later."""
    out: list[tuple[str, bytes]] = []
    batch = WriteBatch(Load(SHARED_FROM))
    transport = Transport("a", out)

    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        seen: list[str] = []
        loop.call_soon(lambda: seen.append(f"before: {len(out)} written"))
        batch.write(transport, b"x")
        after = loop.create_future()

        def then() -> None:
            seen.append(f"after: {len(out)} written")
            after.set_result(None)

        loop.call_soon(then)
        await after
        return seen

    assert asyncio.run(scenario()) == ["before: 0 written", "after: 1 written"]
    out.clear()  # the same batch on the next loop (the first one is closed now) flushes there
    assert asyncio.run(scenario()) == ["before: 0 written", "after: 1 written"]
