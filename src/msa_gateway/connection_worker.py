"""One task per connection that serves its proxied requests in turn, instead of a task per request.

Why: asyncio's ``Task`` costs more to make and to drop than the request's own routing does:
``Task.__init__`` registers the task in a ``WeakSet`` (interpreted Python), the set's weakref
callback removes it again, and the done callback runs through ``call_soon``: some 7,000
instructions a request (callgrind's caller tree, bench/README.md). A connection's requests come
one after another (the next starts once the previous response is complete), so one task can run
them in order, woken for the next request through a future, which costs a fraction of a task.

What a request shares with the others of its connection: the task (``asyncio.current_task()``)
and the task's context. The proxy's path sets no context variable; a loop with a task factory,
or uvicorn's ``reset_contextvars``, keeps a task per request (``protocol.py`` decides).

The task is named, counted in the server's ``tasks`` while it lives (uvicorn's shutdown waits for
them), and ends when the connection does (``close``): at once when idle, after its request
otherwise. An exception a handler lets out (each answers its own failures) goes to the loop's
exception handler, as an unretrieved task exception would, and the next request is served.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

Handler = Callable[[Any, Any, Any], Coroutine[Any, Any, None]]
Job = tuple[Handler, Any]  # a request's handler and its cycle (scope, receive, send)

TASK_NAME = "http-requests"  # one connection's proxied requests, in turn
_Task = asyncio.Task


class ConnectionWorker:
    """Runs ``handler(cycle.scope, cycle.receive, cycle.send)`` for each job handed over, in order."""

    __slots__ = ("_closed", "_flush", "_loop", "_next", "_tasks", "_wake", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop, tasks: set[Any], flush: Callable[[], None]) -> None:
        self._loop = loop
        self._tasks = tasks
        self._flush = flush  # writes held for the end of the turn, sent before a queued job runs
        self.task: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[Job | None] | None = None  # while the task waits for a job
        self._next: Job | None = None  # a job handed over while the task was busy
        self._closed = False

    def serve(self, handler: Handler, cycle: Any) -> None:
        """Run this request next: wake the idle task, queue behind the busy one, or start the task."""
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set_result((handler, cycle))
        elif self.task is not None and not self.task.done():  # done: cancelled before it ever ran
            self._next = (handler, cycle)  # one at most: a job starts once the one before it answered
        else:
            self.task = self._spawn(self._run(handler, cycle))

    def close(self) -> None:
        """The connection is gone or upgraded: end the task once it is idle."""
        self._closed = True
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set_result(None)

    async def _run(self, handler: Handler, cycle: Any) -> None:
        # One await for the requests and the waits between them: mypyc keeps what an await has
        # finished with until that await runs again. With an await for each, a request's finished
        # coroutine, and everything it held, would be freed only when the next request began, on
        # that request's way; with one, the wait after a request frees it.
        step: Job | asyncio.Future[Job | None] | None = (handler, cycle)
        try:
            while step is not None:
                if isinstance(step, tuple):
                    handler, cycle = step
                    awaited: Awaitable[Any] = handler(cycle.scope, cycle.receive, cycle.send)
                    serving = True
                else:
                    awaited = step
                    serving = False
                result: Any = None
                try:
                    result = await awaited
                except Exception as exc:
                    if not serving:
                        raise
                    self._report(exc)  # a handler's bug: reported, and the connection goes on
                step = self._after_request() if serving else result
        finally:
            self._stop()

    def _after_request(self) -> Job | asyncio.Future[Job | None] | None:
        """Return the next job, a future that brings it, or None once the connection is closed."""
        job = self._next
        if job is not None:
            self._next = None
            self._flush()  # the previous response may be held: it goes out before this one's
            return job
        if self._closed:
            return None
        wake: asyncio.Future[Job | None] = self._loop.create_future()
        self._wake = wake
        return wake

    def _stop(self) -> None:
        """The task ends (closed, or cancelled): a job still queued gets a task of its own."""
        self.task = None
        self._wake = None
        job, self._next = self._next, None
        if job is not None and not self._closed:
            handler, cycle = job
            self._spawn(handler(cycle.scope, cycle.receive, cycle.send))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Start a named task, counted in the server's tasks while it runs."""
        task = _Task(coro, loop=self._loop, name=TASK_NAME)
        task.add_done_callback(self._tasks.discard)
        self._tasks.add(task)
        return task

    def _report(self, exc: Exception) -> None:
        self._loop.call_exception_handler(
            {"message": "a proxied request's handler failed", "exception": exc, "task": self.task}
        )
