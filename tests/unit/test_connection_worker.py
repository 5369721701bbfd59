"""One task serves a connection's proxied requests in turn: woken per request, ended with the connection."""

from __future__ import annotations

import asyncio
from typing import Any

from msa_gateway.connection_worker import TASK_NAME, ConnectionWorker


class Cycle:
    """What a handler is given: the scope, receive and send of one request."""

    def __init__(self, name: str) -> None:
        self.scope = {"name": name}
        self.receive = None
        self.send = None


class Handlers:
    """Records which request ran in which task; ``gate`` holds a request until it is opened."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, asyncio.Task[Any] | None]] = []
        self.gate: asyncio.Event | None = None
        self.flushed: list[int] = []

    async def handle(self, scope: dict[str, str], receive: Any, send: Any) -> None:
        self.ran.append((scope["name"], asyncio.current_task()))
        if self.gate is not None and scope["name"] == "held":
            await self.gate.wait()

    async def fail(self, scope: dict[str, str], receive: Any, send: Any) -> None:
        raise RuntimeError("a handler's bug")

    def flush(self) -> None:
        self.flushed.append(len(self.ran))


def worker(handlers: Handlers, tasks: set[Any]) -> ConnectionWorker:
    return ConnectionWorker(asyncio.get_running_loop(), tasks, handlers.flush)


async def busy(handlers: Handlers, tasks: set[Any]) -> tuple[ConnectionWorker, asyncio.Task[None]]:
    """Return a worker whose task runs a request held until ``handlers.gate`` opens."""
    handlers.gate = asyncio.Event()
    w = worker(handlers, tasks)
    w.serve(handlers.handle, Cycle("held"))
    task = w.task
    assert task is not None
    await asyncio.sleep(0)  # the task's first step: the held request has begun
    assert [name for name, _ in handlers.ran] == ["held"]
    return w, task


async def idle(w: ConnectionWorker) -> None:
    """Return once the worker's task waits for its next request."""
    for _ in range(100):  # a few loop turns at most: nothing here waits for anything else
        if w._wake is not None:  # the state this test is about
            return
        await asyncio.sleep(0)
    raise AssertionError("the worker's task never waited for a next request")


async def test_one_named_task_serves_the_requests_in_turn_and_ends_with_the_connection() -> None:
    handlers, tasks = Handlers(), set[Any]()
    w = worker(handlers, tasks)
    w.serve(handlers.handle, Cycle("first"))
    task = w.task
    assert task is not None and task.get_name() == TASK_NAME and tasks == {task}
    await idle(w)
    w.serve(handlers.handle, Cycle("second"))
    await idle(w)
    assert handlers.ran == [("first", task), ("second", task)]
    w.close()
    await task
    assert w.task is None and not tasks


async def test_a_request_handed_over_while_the_task_is_busy_runs_next_after_a_flush() -> None:
    handlers, tasks = Handlers(), set[Any]()
    w, _ = await busy(handlers, tasks)
    w.serve(handlers.handle, Cycle("queued"))  # pipelined: the previous answer is complete, its task not done
    assert [name for name, _ in handlers.ran] == ["held"]
    assert handlers.gate is not None
    handlers.gate.set()
    await idle(w)
    assert [name for name, _ in handlers.ran] == ["held", "queued"]
    # What the first held for the end of the turn went out before the second ran.
    assert handlers.flushed == [1]
    assert handlers.ran[0][1] is handlers.ran[1][1]


async def test_closing_while_busy_ends_the_task_after_its_request() -> None:
    handlers, tasks = Handlers(), set[Any]()
    w, task = await busy(handlers, tasks)
    w.close()
    assert not task.done()
    assert handlers.gate is not None
    handlers.gate.set()
    await task
    assert not tasks and w.task is None


async def test_a_failing_handler_is_reported_and_the_next_request_is_still_served() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        handlers, tasks = Handlers(), set[Any]()
        w = worker(handlers, tasks)
        w.serve(handlers.fail, Cycle("bad"))
        await idle(w)
        w.serve(handlers.handle, Cycle("good"))
        await idle(w)
    finally:
        loop.set_exception_handler(None)
    assert [type(c["exception"]) for c in reported] == [RuntimeError]
    assert reported[0]["task"] is w.task
    assert [name for name, _ in handlers.ran] == ["good"]


async def test_a_cancelled_task_leaves_a_queued_request_a_task_and_the_next_one_a_new_worker() -> None:
    handlers, tasks = Handlers(), set[Any]()
    w, first = await busy(handlers, tasks)
    w.serve(handlers.handle, Cycle("queued"))
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert first.cancelled() and w.task is None
    while len(handlers.ran) < 2:
        await asyncio.sleep(0)
    assert handlers.ran[1][0] == "queued" and handlers.ran[1][1] is not first
    w.serve(handlers.handle, Cycle("later"))
    await idle(w)
    assert handlers.ran[2][0] == "later" and w.task is not None and w.task is not first


async def test_a_task_cancelled_before_it_ran_does_not_keep_the_next_request_waiting() -> None:
    handlers, tasks = Handlers(), set[Any]()
    w = worker(handlers, tasks)
    w.serve(handlers.handle, Cycle("never"))
    first = w.task
    assert first is not None
    first.cancel()  # before its first step: its coroutine never runs, nor its cleanup
    await asyncio.gather(first, return_exceptions=True)
    w.serve(handlers.handle, Cycle("next"))
    await idle(w)
    assert [name for name, _ in handlers.ran] == ["next"] and w.task is not first
