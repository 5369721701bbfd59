"""``ready_body``: a body that is all there is taken without a coroutine, as ``open_body`` would read it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from uvicorn.protocols.http.flow_control import FlowControl

from msa_gateway.model import RetryPolicy, ServiceOptions
from msa_gateway.proxy.exchange import SMALL_BODY, ClientGone, Exchange, open_body, ready_body
from msa_gateway.proxy.request import ProxyRequest
from msa_gateway.request_cycle import MessageEvent, RequestCycle


class Transport:
    def is_closing(self) -> bool:
        return False

    def resume_reading(self) -> None:
        pass


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def make_cycle(loop: asyncio.AbstractEventLoop) -> RequestCycle:
    """The cycle uvicorn's protocol would build for one request (what ``receive`` is bound to)."""
    transport: Any = Transport()
    log = logging.getLogger("test")
    flow: Any = FlowControl(transport)
    return RequestCycle(
        {}, transport, flow, log, log, False, [], MessageEvent(loop), False, True, lambda: None
    )


def request(cycle: RequestCycle, method: str, headers: list[tuple[bytes, bytes]]) -> ProxyRequest:
    scope = {"method": method, "raw_path": b"/svc/x", "query_string": b"", "headers": headers, "client": None}
    return ProxyRequest(scope, cycle.receive, cycle.send)


def arrived(cycle: RequestCycle, body: bytes, more: bool) -> None:
    cycle.body += body
    cycle.more_body = more
    cycle.message_event.set()


def test_a_small_body_that_is_all_there_is_taken_and_counted(loop: asyncio.AbstractEventLoop) -> None:
    cycle = make_cycle(loop)
    req = request(cycle, "POST", [(b"content-length", b"5")])
    arrived(cycle, b"hello", False)
    ex = Exchange()
    assert ready_body(req, ex, ServiceOptions()) == b"hello"
    assert ex.received == 5 and ex.body_done and not cycle.message_event.is_set()


def test_a_body_still_arriving_is_left_to_open_body(loop: asyncio.AbstractEventLoop) -> None:
    cycle = make_cycle(loop)
    req = request(cycle, "POST", [(b"content-length", b"10")])
    arrived(cycle, b"hello", True)
    ex = Exchange()
    assert ready_body(req, ex, ServiceOptions()) is None
    assert cycle.body == b"hello" and ex.received == 0  # nothing taken
    arrived(cycle, b"world", False)
    assert loop.run_until_complete(open_body(req, ex, ServiceOptions(), 1.0)) == b"helloworld"


def test_a_body_open_body_would_stream_is_not_taken_whole(loop: asyncio.AbstractEventLoop) -> None:
    cycle = make_cycle(loop)
    req = request(cycle, "POST", [(b"content-length", b"%d" % (SMALL_BODY + 1))])
    arrived(cycle, b"x" * (SMALL_BODY + 1), False)
    options = ServiceOptions(retry=RetryPolicy(max_retries=0))
    assert ready_body(req, Exchange(), options) is None and len(cycle.body) == SMALL_BODY + 1


def test_no_body_takes_nothing(loop: asyncio.AbstractEventLoop) -> None:
    cycle = make_cycle(loop)
    arrived(cycle, b"", False)  # a bodiless request's message is complete
    assert ready_body(request(cycle, "GET", []), Exchange(), ServiceOptions()) is None
    assert cycle.message_event.is_set()  # left for receive


def test_a_body_over_the_limit_is_client_gone_too_large(loop: asyncio.AbstractEventLoop) -> None:
    cycle = make_cycle(loop)
    req = request(cycle, "POST", [(b"content-length", b"10")])
    arrived(cycle, b"0123456789", False)
    ex = Exchange()
    options = ServiceOptions(max_body_size=4)
    with pytest.raises(ClientGone):
        ready_body(req, ex, options)
    assert ex.too_large
