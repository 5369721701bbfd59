"""Background tasks: every one named, owned and restarted with backoff when it crashes.

As mitmproxy does, every background task is created through one helper that names it and keeps a
reference; as an Erlang supervisor does, a crashed task is started again from its factory, after
a pause that doubles with each crash in a row (0.1 s up to 30 s) and resets once the task ran fine
for ``stable_after`` seconds. A task that returns is done; a cancelled one stays cancelled. Each
crash is logged once (task name and error) and counted per *kind* (``health_probe``, not
``health_probe:svc/inst``), so the counts make bounded metric labels.

The runtime owns one ``Supervisor`` and hands it to the components that start tasks; a component
built on its own (a registration helper in a service, a client in a test) makes a private one.
Nothing here runs per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger("msa_gateway.tasks")

Factory = Callable[[], Awaitable[Any]]
State = Literal["running", "restarting"]
MAX_FAILING_LISTED = 20


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How long to wait before starting a crashed task again."""

    initial: float = 0.1
    maximum: float = 30.0
    stable_after: float = 60.0  # a task that ran this long before crashing starts again at ``initial``

    def delay(self, streak: int) -> float:
        """Return the pause after the ``streak``-th crash in a row (1-based)."""
        return min(self.maximum, self.initial * 2.0 ** (streak - 1))


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """What ``/health/`` shows of one supervised task."""

    name: str
    kind: str
    state: State
    restarts: int
    last_error: str | None
    since: float  # Unix time the current state began

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {
            "name": self.name,
            "kind": self.kind,
            "state": self.state,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "since": self.since,
        }


class Supervised:
    """The handle ``spawn`` returns: one named task, started again after each crash."""

    def __init__(self, kind: str, name: str, factory: Factory, restart: bool, started: float) -> None:
        self.kind, self.name, self.factory, self.restart = kind, name, factory, restart
        self.state: State = "running"
        self.since = started  # when the current state began
        self.last_crash: float | None = None
        self.restarts = 0
        self.streak = 0
        self.last_error: str | None = None
        self.task: asyncio.Task[None] | None = None

    def cancel(self) -> None:
        """Stop the task (and any restart) without waiting."""
        if self.task is not None:
            self.task.cancel()

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the task and wait up to ``timeout`` seconds until it has stopped."""
        self.cancel()
        if self.task is not None:
            await _wait_stopped([self.task], timeout)

    def done(self) -> bool:
        """Return whether the task has finished (returned, or was cancelled)."""
        return self.task is not None and self.task.done()


class Supervisor:
    """Start, restart, describe and stop the background tasks of one owner."""

    def __init__(
        self,
        policy: RestartPolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.policy = policy or RestartPolicy()
        self._clock = clock
        self._sleep = sleep
        self._live: dict[Supervised, None] = {}  # insertion-ordered: spawn order
        self.crashes: Counter[str] = Counter()  # by kind, since start
        self.last_errors: dict[str, tuple[float, str]] = {}  # kind -> (when, error)
        self._closed = False

    def spawn(
        self, kind: str, factory: Factory, *, key: str | None = None, restart: bool = True
    ) -> Supervised:
        """Start ``factory()`` as a task named ``kind`` (or ``kind:key``); start it again if it crashes.

        ``restart=False`` is for tasks whose owner restarts them as a group: a crash is still logged
        and counted, then the task stays down.
        """
        if self._closed:
            raise RuntimeError(f"cannot start {kind!r}: the supervisor is closed")
        name = kind if key is None else f"{kind}:{key}"
        entry = Supervised(kind, name, factory, restart, self._clock())
        entry.task = asyncio.get_running_loop().create_task(self._run(entry), name=name)
        self._live[entry] = None
        entry.task.add_done_callback(lambda _: self._live.pop(entry, None))
        return entry

    async def _run(self, entry: Supervised) -> None:
        while True:
            started = self._clock()
            try:
                await entry.factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                now = self._clock()
                entry.streak = 1 if now - started >= self.policy.stable_after else entry.streak + 1
                self._crashed(entry, exc, now)
            if not entry.restart:
                return
            await self._sleep(self.policy.delay(entry.streak))
            entry.restarts += 1
            entry.state, entry.since = "running", self._clock()

    def _crashed(self, entry: Supervised, exc: Exception, now: float) -> None:
        error = repr(exc)
        entry.last_error, entry.last_crash = error, now
        entry.state, entry.since = "restarting", now
        self.crashes[entry.kind] += 1
        self.last_errors[entry.kind] = (now, error)
        log.error(
            "background task crashed",
            exc_info=exc,
            extra={
                "task": entry.name,
                "error": error,
                "restart_in": self.policy.delay(entry.streak) if entry.restart else None,
            },
        )

    def describe(self) -> list[TaskInfo]:
        """Return the state of every live task, by name."""
        return _by_name(self._live)

    def failing(self) -> list[TaskInfo]:
        """Return the live tasks that crashed less than ``stable_after`` seconds ago, by name."""
        cutoff = self._clock() - self.policy.stable_after
        return _by_name(e for e in self._live if e.last_crash is not None and e.last_crash > cutoff)

    def kinds(self) -> dict[str, dict[str, Any]]:
        """Return, per kind, the live task count and (once one crashed) crashes and the last error."""
        kinds: dict[str, dict[str, Any]] = {}
        for entry in self._live:
            kinds.setdefault(entry.kind, {"running": 0, "crashes": 0})["running"] += 1
        for kind, crashes in self.crashes.items():
            when, error = self.last_errors[kind]
            row = kinds.setdefault(kind, {"running": 0})
            row.update(crashes=crashes, last_error=error, last_crash=when)
        return dict(sorted(kinds.items()))

    def summary(self) -> dict[str, Any]:
        """Return the ``tasks`` section of ``/health/``: counts per kind and the failing tasks."""
        return {
            "running": len(self._live),
            "crashes": sum(self.crashes.values()),
            "kinds": self.kinds(),
            "failing": [info.as_dict() for info in self.failing()[:MAX_FAILING_LISTED]],
        }

    async def aclose(self, timeout: float = 5.0) -> None:
        """Cancel what is still running, newest first, and wait up to ``timeout`` seconds for it."""
        self._closed = True
        entries = list(reversed(self._live))
        for entry in entries:
            entry.cancel()
        await _wait_stopped([e.task for e in entries if e.task is not None], timeout)


def _by_name(entries: Iterable[Supervised]) -> list[TaskInfo]:
    infos = (TaskInfo(e.name, e.kind, e.state, e.restarts, e.last_error, e.since) for e in entries)
    return sorted(infos, key=lambda info: info.name)


async def _wait_stopped(tasks: list[asyncio.Task[None]], timeout: float) -> None:
    """Wait up to ``timeout`` seconds for cancelled ``tasks``; name the ones that would not stop."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    if pending:
        log.error(
            "background tasks did not stop in time",
            extra={"tasks": sorted(t.get_name() for t in pending), "timeout": timeout},
        )
