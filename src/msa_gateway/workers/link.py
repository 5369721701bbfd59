"""The worker's side of the hub: share probe results and ejections, answer and ask for metrics.

A worker is ``msa-gateway run`` started by the supervisor with ``MSA_GATEWAY_WORKER`` (``i/n``),
``MSA_GATEWAY_WORKER_FD`` (its listening socket) and ``MSA_GATEWAY_HUB`` (the hub's socket) in
its environment. Worker 0 runs the active health checks for the host and publishes every result;
the others probe nothing and take the states as they come (``SharedChecker``). Passive ejections
travel through the runtime's ``EjectionSync``. ``/metrics`` on any worker asks the hub for the
merged exposition. If the hub's connection ends, the supervisor is gone and the worker drains
and exits rather than linger as an orphan.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import signal
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from msa_gateway.health.active import ActiveHealthChecker, ProbeResult, ProbeTarget
from msa_gateway.health.table import HealthState, HealthTable
from msa_gateway.tasks import Supervisor
from msa_gateway.workers import wire

if TYPE_CHECKING:
    from msa_gateway.runtime import Runtime

log = logging.getLogger("msa_gateway.workers")
WORKER_ENV, FD_ENV, HUB_ENV = "MSA_GATEWAY_WORKER", "MSA_GATEWAY_WORKER_FD", "MSA_GATEWAY_HUB"
SCRAPE_TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerEnv:
    """Which worker this process is, its inherited listening socket and the hub's address."""

    index: int
    count: int
    fd: int
    hub: str

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> WorkerEnv | None:
        """Return the worker's identity, or None when this process is not a supervised worker."""
        spec = environ.get(WORKER_ENV)
        if not spec:
            return None
        index, _, count = spec.partition("/")
        return cls(int(index), int(count), int(environ[FD_ENV]), environ[HUB_ENV])

    @property
    def probes(self) -> bool:
        """Return whether this worker runs the host's active health checks (worker 0 does)."""
        return self.index == 0


class SharedChecker(ActiveHealthChecker):
    """Active checks run by one worker per host; every result is published to the others."""

    def __init__(
        self,
        table: HealthTable,
        link: WorkerLink,
        *,
        probing: bool,
        tasks: Supervisor,
        like: ActiveHealthChecker,
    ) -> None:
        super().__init__(table, tasks=tasks, limits=like.limits, lag=like.lag)
        self.table = table
        self.link = link
        self.probing = probing

    def update(self, targets: Mapping[str, ProbeTarget], removed: Iterable[str]) -> None:
        """Start and stop probes in the probing worker; elsewhere the results arrive from it."""
        if self.probing:
            super().update(targets, removed)

    def record(self, target: ProbeTarget, result: ProbeResult) -> None:
        """Record the result here and send the resulting state to the other workers."""
        super().record(target, result)
        self.link.publish_health(target.service, target.key, self.table.get(target.key))


class WorkerLink:
    """One worker's connection to the hub, a background task of its runtime."""

    def __init__(self, env: WorkerEnv, runtime: Runtime) -> None:
        self.env = env
        self.rt = runtime
        self.writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[str]] = {}
        self._answers: set[asyncio.Task[None]] = set()

    def attach(self) -> None:
        """Wire the runtime to the hub: shared checks, ejections out, metrics through the hub."""
        rt = self.rt
        rt.worker = self.env.index
        rt.checker = SharedChecker(rt.health, self, probing=self.env.probes, tasks=rt.tasks, like=rt.checker)
        rt.sync.sinks.append(self.publish_eject)
        rt.metrics.aggregate = self.scrape
        rt.spawn("worker_link", self.run)

    async def run(self) -> None:
        """Connect once the registry has loaded, then handle the hub's messages until it goes."""
        await self.rt.aggregator.loaded.wait()
        reader, writer = await asyncio.open_unix_connection(self.env.hub, limit=wire.LIMIT)
        self.writer = writer
        wire.write(writer, {"op": "hello", "worker": self.env.index, "pid": os.getpid()})
        try:
            while (msg := await wire.read(reader)) is not None:
                self._handle(msg)
        finally:
            self.writer = None
            writer.close()
        log.error("supervisor_gone", extra={"worker": self.env.index, "action": "draining and exiting"})
        os.kill(os.getpid(), signal.SIGTERM)

    def _handle(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "health":
            self.rt.health.assign(msg["service"], msg["key"], HealthState(**msg["state"]))
        elif op == "eject":
            self.rt.sync.apply(msg["service"], msg["key"], float(msg["remaining"]))
        elif op == "collect":
            answer = self._answer_collect(int(msg["id"]), bool(msg.get("openmetrics")))
            task = asyncio.get_running_loop().create_task(answer)
            self._answers.add(task)
            task.add_done_callback(self._answers.discard)
        elif op == "scraped":
            future = self._pending.pop(int(msg["id"]), None)
            if future is not None and not future.done():
                future.set_result(str(msg["text"]))

    async def _answer_collect(self, rid: int, openmetrics: bool) -> None:
        """Send this worker's exposition, rendered a slice at a time so proxied requests keep flowing."""
        text = (await self.rt.metrics.render_async(openmetrics)).decode()
        if self.writer is not None:
            wire.write(self.writer, {"op": "metrics", "id": rid, "text": text})

    def publish_health(self, service: str, key: str, state: HealthState) -> None:
        """Send one instance's health state to the other workers."""
        if self.writer is not None:
            msg = {"op": "health", "service": service, "key": key, "state": dataclasses.asdict(state)}
            wire.write(self.writer, msg)

    def publish_eject(self, service: str, key: str, remaining: float) -> None:
        """Send one passive ejection to the other workers."""
        if self.writer is not None:
            wire.write(self.writer, {"op": "eject", "service": service, "key": key, "remaining": remaining})

    async def scrape(self, openmetrics: bool = False) -> bytes:
        """Return every worker's metrics merged by the hub (this worker's alone if the hub is away)."""
        if self.writer is None:
            return await self.rt.metrics.render_async(openmetrics)
        rid = next(self._ids)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        wire.write(self.writer, {"op": "scrape", "id": rid, "openmetrics": openmetrics})
        try:
            return (await asyncio.wait_for(future, SCRAPE_TIMEOUT)).encode()
        except TimeoutError:
            log.warning("merged_metrics_timeout", extra={"worker": self.env.index})
            return await self.rt.metrics.render_async(openmetrics)
        finally:
            self._pending.pop(rid, None)
