"""Hot reload of the YAML file: a changed file (polled) or SIGHUP swaps a new config in, like a snapshot.

The file is checked every ``gateway.reload_interval`` seconds by its ``stat`` (size, mtime,
inode: an atomic rename or a Kubernetes ConfigMap swap counts), and SIGHUP checks it at once.
A changed file is read and validated off the event loop, then ``Runtime.reconfigure`` builds a
new snapshot from the services discovered so far and swaps it in with one assignment; requests
in flight keep the snapshot (routes, stages, options) they started with. A file that does not
validate leaves the running config alone and is logged once, with file, key and reason, until
its content changes. Each attempt counts in ``gateway_config_reloads_total{result}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from msa_gateway.errors import ConfigError
from msa_gateway.settings import EMBEDDED_CONFIG, load_config

if TYPE_CHECKING:
    from msa_gateway.runtime import Runtime

log = logging.getLogger("msa_gateway.config")


def _stat(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ConfigReloader:
    """Watch the runtime's YAML file and swap a new config in when it changes."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        path = runtime.config.source
        self.path = None if path == EMBEDDED_CONFIG else path
        self.loaded_at = time.time()
        self.last_error: str | None = None
        self.last_swap_ms: float | None = None
        self._stat = _stat(self.path) if self.path else None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._signal = False

    def start(self) -> None:
        """Start the watch task and take SIGHUP (when running on the main thread's loop).

        Nothing to watch for the embedded file, or a config that was not read from a file.
        """
        if self.path is None or self._stat is None:
            return
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._wake.set)
            self._signal = True
        self.rt.spawn("config_watch", self._watch)

    def stop(self) -> None:
        """Give SIGHUP back (the watch task stops with the runtime's tasks)."""
        if self._signal:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._signal = False

    def summary(self) -> dict[str, Any]:
        """Return what ``/health/`` shows about the running config."""
        config = self.rt.config
        registered = self.rt.snapshot.services.__contains__
        return {
            "source": config.source,
            "hash": config.digest,
            "loaded_at": self.loaded_at,
            "last_error": self.last_error,
            "routes": len(config.routes),
            "splits": {r.name: r.split.describe(registered) for r in config.routes if r.split is not None},
        }

    async def _watch(self) -> None:
        interval = self.rt.config.reload_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval or None)
            signalled = self._wake.is_set()
            self._wake.clear()
            interval = self.rt.config.reload_interval
            if signalled or _stat(self.path or "") != self._stat:
                await self.reload("signal" if signalled else "file")

    async def reload(self, trigger: str = "request") -> str:
        """Check the file now; return ``ok``, ``error`` or ``unchanged``."""
        assert self.path is not None
        async with self._lock:
            self._stat = _stat(self.path)
            try:
                config = await asyncio.to_thread(load_config, self.path)
            except ConfigError as exc:
                return self._failed(exc, trigger)
            if config.digest == self.rt.config.digest:
                self.rt.metrics.config_reloads.labels("unchanged").inc()
                return "unchanged"
            started = time.perf_counter()
            self.rt.reconfigure(config)
            self.last_swap_ms = (time.perf_counter() - started) * 1000
            self.loaded_at, self.last_error = time.time(), None
            self.rt.metrics.config_reloads.labels("ok").inc()
            log.info(
                "config reloaded",
                extra={
                    "file": self.path,
                    "hash": config.digest,
                    "trigger": trigger,
                    "routes": len(config.routes),
                    "swap_ms": round(self.last_swap_ms, 3),
                },
            )
            return "ok"

    def _failed(self, exc: ConfigError, trigger: str) -> str:
        self.rt.metrics.config_reloads.labels("error").inc()
        if str(exc) != self.last_error:
            self.last_error = str(exc)
            log.error(
                "config reload failed; the running config stays",
                extra={"file": exc.source, "key": exc.key, "reason": exc.reason, "trigger": trigger},
            )
        return "error"
