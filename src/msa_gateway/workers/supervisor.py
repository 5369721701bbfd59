"""``msa-gateway run --workers N``: one supervisor process and N worker processes on one port.

The supervisor binds N listening sockets on ``HOST:PORT`` with ``SO_REUSEPORT`` (the kernel
spreads new connections over them evenly by hash) and hands socket *i* to worker *i*, which is
``msa-gateway run`` again with its identity in the environment (``workers/link.py``), forked
from a fork server that imported the gateway once (``multiprocessing``'s ``forkserver``). The
supervisor keeps its copy of every socket open, so while a worker is being replaced its socket
keeps queueing connections for the next one instead of refusing them.

* A worker that exits is started again after a pause that doubles with each exit in a row
  (``RestartPolicy``: 0.1 s up to 10 s, back to 0.1 s once a worker ran 30 s), logged as
  ``worker_exited`` and counted in ``gateway_worker_restarts_total``. A worker that says its
  start-up failed (exit code ``STARTUP_FAILED``, e.g. the admin port taken) stops everything.
* SIGTERM/SIGINT: the supervisor closes its copies of the sockets, forwards the signal to every
  worker (each turns ``/health/ready`` 503, drains up to ``DRAIN_TIMEOUT`` and exits 0) and exits 0
  once all have exited cleanly (1 otherwise).
* SIGHUP is forwarded to every worker; each reloads its own configuration.
* The hub (``hub.py``) on a Unix socket in a private directory relays health and ejections and
  merges metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from msa_gateway.settings import Settings
from msa_gateway.tasks import RestartPolicy
from msa_gateway.workers.hub import Hub
from msa_gateway.workers.worker import STARTUP_FAILED, WORKER_MODULE, run_worker

log = logging.getLogger("msa_gateway.workers")

POLICY = RestartPolicy(initial=0.1, maximum=10.0, stable_after=30.0)
KILL_GRACE = 10.0  # seconds past DRAIN_TIMEOUT before a worker that will not stop is killed


def bind_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """Return ``count`` listening sockets on ``host:port`` in one ``SO_REUSEPORT`` group.

    A port something already listens on is refused, even another ``SO_REUSEPORT`` group of the
    same user (a second gateway started by mistake), which could otherwise join it and silently
    take a share of the first one's connections.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    try:
        if port:
            _refuse_taken(family, host, port)
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(2048)
            sock.set_inheritable(True)
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return socks


def _refuse_taken(family: socket.AddressFamily, host: str, port: int) -> None:
    """Raise ``OSError`` (in use) when a socket listens on ``host:port``: a bind without ``SO_REUSEPORT``."""
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT connections are no owner
        probe.bind((host, port))
    finally:
        probe.close()


@dataclass(slots=True)
class Slot:
    """One worker position: its socket, its current process and its restart history."""

    index: int
    sock: socket.socket
    proc: BaseProcess | None = None
    restarts: int = 0
    streak: int = 0


class WorkerSupervisor:
    """Start, watch, restart and stop the workers; relay signals."""

    def __init__(self, settings: Settings, argv: Sequence[str]) -> None:
        self.settings = settings
        self.argv = list(argv)
        self.count = settings.workers
        self.slots: list[Slot] = []
        self.stopping = asyncio.Event()
        self.fatal = False
        self.hub: Hub | None = None
        self._helpers: set[asyncio.Task[None]] = set()
        # Workers are forked from a server process that imported the gateway once: a worker
        # replaced after a crash serves again in a fraction of a second, not after a fresh
        # interpreter's ~1 s of imports. That process runs no event loop, so forking it is safe.
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload([WORKER_MODULE])

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; return the exit status."""
        return asyncio.run(self._main())

    async def _main(self) -> int:
        socks = bind_sockets(self.settings.host, self.settings.port, self.count)
        self.slots = [Slot(i, s) for i, s in enumerate(socks)]
        workdir = tempfile.mkdtemp(prefix="msa-gateway-")
        self.hub = Hub(os.path.join(workdir, "hub.sock"), self.metrics)
        await self.hub.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        address = f"{self.settings.host}:{self.settings.port}"
        log.info("supervisor_started", extra={"workers": self.count, "address": address, "pid": os.getpid()})
        keepers = [loop.create_task(self._keep(slot), name=f"worker-{slot.index}") for slot in self.slots]
        self._helpers.add(loop.create_task(self._announce_ready(), name="workers-ready"))
        try:
            codes = await asyncio.gather(*keepers)
        finally:
            await self.hub.close()
            shutil.rmtree(workdir, ignore_errors=True)
        clean = not self.fatal and all(code == 0 for code in codes)
        log.info("supervisor_stopped", extra={"exit_codes": codes})
        return 0 if clean else 1

    async def _announce_ready(self) -> None:
        assert self.hub is not None
        started = time.monotonic()
        if await self.hub.wait_connected(self.count, 60.0):
            took = round(time.monotonic() - started, 3)
            log.info("workers_ready", extra={"workers": self.count, "seconds": took})

    async def _keep(self, slot: Slot) -> int:
        """Run worker ``slot.index`` until the supervisor stops; return its last exit code."""
        loop = asyncio.get_running_loop()
        while True:
            assert self.hub is not None
            args = (slot.index, self.count, slot.sock, self.hub.path, self.argv)
            slot.proc = proc = self.context.Process(target=run_worker, args=args, name=f"worker-{slot.index}")
            proc.start()
            started = loop.time()
            code = await _exited(proc)
            self.hub.worker_exited(slot.index, proc.pid or 0)
            if self.stopping.is_set():
                return code
            if code == STARTUP_FAILED:
                log.error("worker_startup_failed", extra={"worker": slot.index, "action": "stopping all"})
                self.fatal = True
                self._stop(signal.SIGTERM)
                return code
            slot.streak = 1 if loop.time() - started >= POLICY.stable_after else slot.streak + 1
            delay = POLICY.delay(slot.streak)
            slot.restarts += 1
            log.error(
                "worker_exited",
                extra={"worker": slot.index, "pid": proc.pid, "exit_code": code, "restart_in": delay},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            if self.stopping.is_set():
                return 0

    def _stop(self, sig: int) -> None:
        if self.stopping.is_set():
            return
        log.info("supervisor_stopping", extra={"signal": signal.Signals(sig).name})
        self.stopping.set()
        for slot in self.slots:
            slot.sock.close()  # the workers' copies keep serving until they drain
        self._forward(signal.SIGTERM)
        self._helpers.add(asyncio.get_running_loop().create_task(self._kill_stragglers()))

    def _forward(self, sig: int) -> None:
        live = [s.proc for s in self.slots if s.proc is not None and s.proc.exitcode is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError, TypeError):
                os.kill(proc.pid, sig)  # type: ignore[arg-type]
        if sig == signal.SIGHUP:
            log.info("reload_forwarded", extra={"workers": [p.pid for p in live]})

    async def _kill_stragglers(self) -> None:
        await asyncio.sleep(self.settings.drain_timeout + KILL_GRACE)
        for slot in self.slots:
            if slot.proc is not None and slot.proc.exitcode is None:
                log.error("worker_killed", extra={"worker": slot.index, "reason": "did not drain in time"})
                with contextlib.suppress(ProcessLookupError, ValueError):
                    slot.proc.kill()

    def metrics(self) -> Sequence[Metric]:
        """Return the supervisor's own metrics for the merged scrape."""
        live = len(self.hub.conns) if self.hub is not None else 0
        workers = GaugeMetricFamily("gateway_workers", "Worker processes up and connected now.", value=live)
        restarts = CounterMetricFamily(
            "gateway_worker_restarts", "Worker processes started again after they exited.", labels=["worker"]
        )
        for slot in self.slots:
            restarts.add_metric([str(slot.index)], slot.restarts)
        return [workers, restarts]


async def _exited(proc: BaseProcess) -> int:
    """Wait (without blocking the loop) until ``proc`` exits; return its exit code (-N: signal N)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(proc.sentinel, ready)
    try:
        await done
    finally:
        loop.remove_reader(proc.sentinel)
    proc.join()  # reaped; the object stays readable (pid, exitcode) for the logs and metrics
    return proc.exitcode if proc.exitcode is not None else 1
