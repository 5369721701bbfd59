"""BUSY_POLL_US: client traffic keeps one callback scheduled (the loop polls) until the window passes.

The clock is a list the tests move by hand: what is checked is the window's arithmetic and that
the chain of turns starts, stays single and stops, not how long anything took.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest
import uvicorn
from uvicorn.server import ServerState

from msa_gateway.busy_poll import BusyPoll, busy_poll
from msa_gateway.cli import gateway_server
from msa_gateway.listeners import ManagementListener
from msa_gateway.protocol import ProtocolFactory, ServerLimits, make_protocol
from msa_gateway.settings import Settings
from tests.support.fake_upstream import make_runtime
from tests.unit.server.test_protocol_limits import FakeTransport, settle, statuses


class Clock:
    """A clock that moves only when told, and counts how often it was read."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


async def turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_off_by_default_and_the_window_in_microseconds() -> None:
    assert busy_poll(0) is None
    assert make_protocol(ServerLimits()).poller is None
    poller = busy_poll(50)
    assert poller is not None and poller.window == pytest.approx(50e-6)
    factory = make_protocol(ServerLimits(), 250)
    assert factory.poller is not None and factory.poller.window == pytest.approx(250e-6)


async def test_armed_it_turns_until_the_window_has_passed() -> None:
    clock = Clock()
    poller = BusyPoll(0.001, clock=clock)
    assert not poller.polling
    poller.arm(asyncio.get_running_loop())
    await turns(10)
    assert poller.polling  # the window has not passed: still turning
    clock.now = 0.0011
    await turns(2)
    assert not poller.polling  # passed: the loop may sleep again


async def test_arming_again_extends_the_window_with_one_chain_of_turns() -> None:
    clock = Clock()
    poller = BusyPoll(0.001, clock=clock)
    loop = asyncio.get_running_loop()
    poller.arm(loop)
    clock.now = 0.0009
    poller.arm(loop)  # more traffic: until 0.0019
    clock.now = 0.0015
    before = clock.reads
    await turns(10)
    assert poller.polling
    assert clock.reads - before <= 11  # one read a turn: a second chain would read twice
    clock.now = 0.002
    await turns(2)
    assert not poller.polling


def test_a_closed_loop_does_not_keep_it_from_turning_the_next() -> None:
    clock = Clock()
    poller = BusyPoll(1.0, clock=clock)
    first = asyncio.new_event_loop()
    poller.arm(first)  # its turn never runs: the loop closes first
    first.close()
    second = asyncio.new_event_loop()
    try:
        poller.arm(second)
        second.run_until_complete(turns(3))
        assert poller.polling
        clock.now = 2.0
        second.run_until_complete(turns(2))
        assert not poller.polling
    finally:
        second.close()


class Gated:
    """A proxied path whose answer waits for ``gate``: the request's bytes and its answer come apart."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise AssertionError("only the direct path is asked for")

    def direct_app(self, scope: dict[str, Any]) -> Any:
        return self.answer

    async def answer(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


async def test_a_request_arms_it_and_so_does_the_end_of_its_response() -> None:
    clock = Clock()
    poller = BusyPoll(0.001, clock=clock)
    app = Gated()
    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, proxy_headers=False)
    config.load()
    loop = asyncio.get_running_loop()
    proto = ProtocolFactory(ServerLimits(), poller)(config, ServerState(), {}, _loop=loop)
    transport = FakeTransport()
    proto.connection_made(transport)
    proto.data_received(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
    assert poller.polling  # the request's bytes
    clock.now = 1.0  # the instance takes its time: the window passes, the loop may sleep
    await settle()
    assert not poller.polling
    app.gate.set()
    await settle()
    assert statuses(bytes(transport.out)) == [200]
    assert poller.polling  # the response's end: the client's next request may be on its way
    clock.now = 2.0
    await settle()
    assert not poller.polling
    proto.connection_lost(None)


async def _api(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not called")


def test_msa_gateway_run_polls_on_the_proxy_listener_only() -> None:
    settings = Settings(_env_file=None, busy_poll_us=100, admin_port=9999)  # type: ignore[call-arg]
    proxy: Any = gateway_server(cast(Any, _api), settings).config.http
    assert isinstance(proxy, ProtocolFactory) and proxy.poller is not None
    assert proxy.poller.window == pytest.approx(100e-6)
    management: Any = ManagementListener(_api, settings).server.config.http
    assert isinstance(management, ProtocolFactory) and management.poller is None


async def test_the_start_up_line_says_how_long_the_loop_polls(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUSY_POLL_US", "100")
    rt, _, _ = make_runtime()
    with caplog.at_level(logging.INFO, "msa_gateway"):
        await rt.start()
    await rt.aclose()
    (record,) = [r for r in caplog.records if r.getMessage() == "gateway starting"]
    assert getattr(record, "busy_poll_us", None) == 100
