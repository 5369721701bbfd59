"""A proxied request runs in its connection's one task; the gateway's own paths go through ASGI as before.

The app here stands for ``GatewayApp``: ``direct_app(scope)`` names the handler of a path, or None
for the paths its ``__call__`` serves (through uvicorn's ``run_asgi``).
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from msa_gateway.protocol import GatewayHttpProtocol, ServerLimits, make_protocol
from msa_gateway.proxy.handler import ProxyApp
from msa_gateway.uvicorn_cycle import abort
from tests.support.fake_upstream import instances, make_runtime
from tests.unit.server.test_protocol_limits import FakeTransport, settle, statuses


async def respond(send: Any, status: int, *, complete: bool = True) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"2")]})
    if complete:
        await send({"type": "http.response.body", "body": b"ok"})


class App:
    """``/ok`` answers directly, ``/cut`` begins an answer and aborts it; every other path: ASGI (201)."""

    def __init__(self) -> None:
        self.coroutines: list[str] = []
        self.tasks: list[asyncio.Task[Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self._note()
        await respond(send, 201)

    def direct_app(self, scope: dict[str, Any]) -> Any:
        return {"/ok": self.ok, "/cut": self.cut}.get(scope["path"])

    async def ok(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self._note()
        await respond(send, 200)

    async def cut(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await respond(send, 200, complete=False)
        abort(send)

    def _note(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        coro = (
            task.get_coro()
        )  # the cycle's run_asgi is compiled: a coroutine type of its own, no __qualname__
        self.coroutines.append(getattr(coro, "__qualname__", type(coro).__name__))


def connect(app: App, **options: Any) -> tuple[GatewayHttpProtocol, FakeTransport]:
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        date_header=False,
        proxy_headers=False,
        **options,
    )
    config.load()  # as msa-gateway run has it: the app itself, not wrapped
    proto = make_protocol(ServerLimits())(config, ServerState(), {}, _loop=asyncio.get_running_loop())
    transport = FakeTransport()
    proto.connection_made(transport)
    return proto, transport


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


async def test_direct_requests_run_in_the_connections_task_and_the_rest_go_through_asgi() -> None:
    app = App()
    proto, transport = connect(app)
    proto.data_received(get("/ok") + get("/own") + get("/ok"))  # pipelined, in order
    await settle()
    assert statuses(bytes(transport.out)) == [200, 201, 200]
    assert app.tasks[0] is app.tasks[2] and app.tasks[0].get_name() == "http-requests"
    assert "run_asgi" in app.coroutines[1] and app.tasks[1].get_name() == "http-request"
    assert proto.tasks == {app.tasks[0]} and not transport.closing  # waiting for the next request
    proto.data_received(get("/ok"))  # keep-alive: the same task again
    await settle()
    assert app.tasks[3] is app.tasks[0]
    proto.connection_lost(None)
    await settle()
    assert app.tasks[0].done() and not proto.tasks


async def test_a_websocket_upgrade_ends_the_connections_task() -> None:
    app = App()
    proto, transport = connect(app)
    transport.set_protocol = lambda protocol: None  # type: ignore[method-assign]
    proto.data_received(get("/ok"))
    await settle()
    worker = app.tasks[0]
    assert not worker.done()
    proto.data_received(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    await settle()
    assert worker.done() and worker not in proto.tasks


async def test_an_aborted_answer_closes_the_connection() -> None:
    proto, transport = connect(App())
    proto.data_received(get("/cut"))
    await settle()
    assert statuses(bytes(transport.out)) == [200] and transport.closing


class CountingTransport(FakeTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        super().write(data)


async def test_the_proxys_own_answer_leaves_in_one_write_like_a_proxied_one() -> None:
    rt, up, _ = make_runtime()
    rt.apply(instances(9001))
    config = uvicorn.Config(
        ProxyApp(rt),
        lifespan="off",
        log_config=None,
        access_log=False,
        date_header=False,
        proxy_headers=False,
    )
    proto = make_protocol(ServerLimits())(config, ServerState(), {}, _loop=asyncio.get_running_loop())
    transport = CountingTransport()
    proto.connection_made(transport)
    proto.data_received(get("/nope/x"))  # no such service: the gateway answers 404 itself
    await settle()
    head, _, body = bytes(transport.out).partition(b"\r\n\r\n")
    assert statuses(head) == [404] and b'"service_not_found"' in body and not up.calls
    assert transport.writes == 1 and not transport.closing


class Recording(App):
    """Notes each request task's name and whether it saw a context variable set outside it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    async def ok(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.seen.append((task.get_name(), OUTSIDE.get()))
        await respond(send, 200)


OUTSIDE: contextvars.ContextVar[str] = contextvars.ContextVar("outside", default="fresh")


@pytest.mark.parametrize("reset", [False, True])
async def test_a_requests_task_is_named_and_its_own_with_a_fresh_context_when_uvicorn_is_told_to(
    reset: bool,
) -> None:
    app = Recording()
    proto, transport = connect(app, reset_contextvars=reset)
    OUTSIDE.set("inherited")
    proto.data_received(get("/ok"))
    await settle()
    assert statuses(bytes(transport.out)) == [200]
    # A fresh context per request needs a task per request; otherwise the connection's task serves it.
    assert app.seen == [("http-request", "fresh") if reset else ("http-requests", "inherited")]


async def test_a_loop_with_a_task_factory_builds_the_requests_tasks_through_it() -> None:
    loop = asyncio.get_running_loop()
    made: list[str | None] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        made.append(task.get_name())
        return task

    loop.set_task_factory(factory)
    try:
        app = Recording()
        proto, transport = connect(app)
        proto.data_received(get("/ok"))
        await settle()
    finally:
        loop.set_task_factory(None)
    assert statuses(bytes(transport.out)) == [200]
    assert len(made) == 1 and app.seen[0][0] == "http-request"
