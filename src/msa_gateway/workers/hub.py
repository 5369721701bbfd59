"""The supervisor's hub: relays health and ejections between workers and merges their metrics.

Every worker keeps one connection to the hub (a Unix socket in a private directory). The hub

* relays each ``health`` state (from the one worker that probes) and each ``eject`` to every
  other worker, and keeps the latest of each so a restarted worker starts with them;
* answers ``scrape`` by asking every worker for its exposition (``collect``), merging the
  answers (``merge.py``) and adding the supervisor's own ``gateway_workers`` and
  ``gateway_worker_restarts_total``, and ``gateway_worker_requests_total{worker}``;
* folds a worker's last exposition into ``Retired`` when the supervisor saw its process exit
  (not when only its connection dropped: a worker whose link restarted still has its counts).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, Metric

from msa_gateway.workers import merge, wire

log = logging.getLogger("msa_gateway.workers")
COLLECT_TIMEOUT = 3.0


class _Conn:
    """One worker's connection and its last exposition."""

    def __init__(self, index: int, pid: int, writer: asyncio.StreamWriter) -> None:
        self.index = index
        self.pid = pid
        self.writer = writer
        self.last: list[Metric] = []


class Hub:
    """Serve the workers' channel on ``path`` until ``close``."""

    def __init__(self, path: str, extra: Callable[[], Sequence[Metric]] = tuple) -> None:
        self.path = path
        self.extra = extra
        self.conns: dict[int, _Conn] = {}
        self.health: dict[str, dict[str, Any]] = {}  # key -> the last ``health`` message
        self.ejections: dict[str, tuple[str, float]] = {}  # key -> (service, monotonic until)
        self.retired = merge.Retired()
        self.closed: dict[int, _Conn] = {}  # pid -> a connection that ended, until its process exits
        self._tasks: set[asyncio.Task[None]] = set()
        self.retired_requests: dict[int, float] = {}
        self.hello = asyncio.Condition()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[str]] = {}
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen on the Unix socket."""
        self._server = await asyncio.start_unix_server(self._serve, self.path, limit=wire.LIMIT)

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.conns.values()):
            conn.writer.close()

    async def wait_connected(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` workers said hello; return whether they did in time."""
        async with self.hello:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.hello.wait_for(lambda: len(self.conns) >= count), timeout)
        return len(self.conns) >= count

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await wire.read(reader)
        if first is None or first.get("op") != "hello":
            writer.close()
            return
        conn = _Conn(int(first["worker"]), int(first["pid"]), writer)
        self.closed.pop(conn.pid, None)  # the same process again (its link restarted): nothing to retire
        self.conns[conn.index] = conn
        self._replay(conn)
        log.info("worker_ready", extra={"worker": conn.index, "pid": first.get("pid")})
        async with self.hello:
            self.hello.notify_all()
        try:
            while (msg := await wire.read(reader)) is not None:
                self._handle(conn, msg)
        finally:
            if self.conns.get(conn.index) is conn:
                del self.conns[conn.index]
                self.closed[conn.pid] = conn
            writer.close()

    def worker_exited(self, index: int, pid: int) -> None:
        """Keep the counts of worker ``index``'s process ``pid``, which has exited (the supervisor saw it)."""
        conn = self.conns.get(index)
        if conn is not None and conn.pid == pid:
            del self.conns[index]
        else:
            conn = self.closed.pop(pid, None)
        if conn is not None:
            self._retire(conn)

    def _replay(self, conn: _Conn) -> None:
        for msg in self.health.values():
            wire.write(conn.writer, msg)
        now = time.monotonic()
        for key, (service, until) in list(self.ejections.items()):
            if until > now:
                msg = {"op": "eject", "service": service, "key": key, "remaining": until - now}
                wire.write(conn.writer, msg)
            else:
                del self.ejections[key]

    def _handle(self, conn: _Conn, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "health":
            self.health[msg["key"]] = msg
            self._relay(conn, msg)
        elif op == "eject":
            self.ejections[msg["key"]] = (msg["service"], time.monotonic() + float(msg["remaining"]))
            self._relay(conn, msg)
        elif op == "scrape":
            answer = self._answer_scrape(conn, int(msg["id"]), bool(msg.get("openmetrics")))
            task = asyncio.get_running_loop().create_task(answer)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif op == "metrics":
            future = self._pending.pop(int(msg["id"]), None)
            if future is not None and not future.done():
                future.set_result(str(msg["text"]))

    def _relay(self, source: _Conn, msg: dict[str, Any]) -> None:
        for conn in self.conns.values():
            if conn is not source:
                wire.write(conn.writer, msg)

    def _retire(self, conn: _Conn) -> None:
        self.retired.add(conn.last)
        total = merge.requests_total(conn.last)
        self.retired_requests[conn.index] = self.retired_requests.get(conn.index, 0.0) + total
        conn.last = []

    async def _collect(self, conn: _Conn, openmetrics: bool) -> list[Metric] | None:
        rid = next(self._ids)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        wire.write(conn.writer, {"op": "collect", "id": rid, "openmetrics": openmetrics})
        try:
            text = await asyncio.wait_for(future, COLLECT_TIMEOUT)
        except TimeoutError:
            log.warning("worker_metrics_timeout", extra={"worker": conn.index})
            return None
        finally:
            self._pending.pop(rid, None)
        # Parsing megabytes takes about a second: in a thread, so relaying health and ejections goes on.
        conn.last = await asyncio.to_thread(merge.parse, text, openmetrics)
        return conn.last

    async def scrape(self, openmetrics: bool = False) -> bytes:
        """Return the merged exposition of every connected worker (and those that died)."""
        conns = list(self.conns.values())
        found = await asyncio.gather(*(self._collect(c, openmetrics) for c in conns))
        per_worker = CounterMetricFamily(
            "gateway_worker_requests",
            "Requests answered, by worker process (how evenly the kernel spreads connections).",
            labels=["worker"],
        )
        answered: list[list[Metric]] = []
        for conn, families in sorted(zip(conns, found, strict=True), key=lambda p: p[0].index):
            if families is None:
                continue
            answered.append(families)
            total = merge.requests_total(families) + self.retired_requests.get(conn.index, 0.0)
            per_worker.add_metric([str(conn.index)], total)
        metrics = merge.merge(answered, self.retired)
        return merge.render([*metrics, per_worker, *self.extra()], openmetrics)

    async def _answer_scrape(self, conn: _Conn, rid: int, openmetrics: bool) -> None:
        text = (await self.scrape(openmetrics)).decode()
        wire.write(conn.writer, {"op": "scraped", "id": rid, "text": text})
