"""The access log: one JSON line per proxied request, written without the logging machinery.

This is the request path, so the line is built as a dict and serialised with orjson in a few
microseconds. Lines finished in the same event-loop iteration are written together at the end
of it (one write and flush instead of one per request; a line is never held longer than that),
and carry the same ``timestamp``, read when the first of them was made: like nginx, which
updates its cached time once per event-loop iteration.
Header values are never logged, and the query string is left out (it often carries tokens).
"""

from __future__ import annotations

import asyncio
import sys
import time
from time import perf_counter  # per line: a global, not a module attribute (tests patch time.time)
from typing import IO, Any

from orjson import OPT_APPEND_NEWLINE, dumps

from msa_gateway.observability.logging import ConsoleFormatter, iso_now

MAX_PATH = 2048


class AccessLog:
    """Write access lines as JSON (or readable text with ``console=True``)."""

    __slots__ = ("_clock", "_console", "_enabled", "_loop", "_pending", "_second", "_stream")

    def __init__(self, stream: IO[str] | None = None, *, enabled: bool = True, console: bool = False) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._enabled = enabled
        self._console = console
        self._pending: list[str] = []
        self._clock: tuple[int, str] = (-1000, "")  # (unix time in ms, its timestamp)
        self._second = ""
        self._loop: asyncio.AbstractEventLoop | None = None  # where the last flush was scheduled

    def _timestamp(self) -> str:
        """Return ``iso_now()`` cheaply: the whole string is cached for its millisecond."""
        ms = int(time.time() * 1000)
        cached_ms, stamp = self._clock
        if ms != cached_ms:
            second, frac = divmod(ms, 1000)
            if second != cached_ms // 1000:
                self._second = iso_now(second)[:-5]  # "YYYY-MM-DDTHH:MM:SS"
            stamp = "%s.%03dZ" % (self._second, frac)  # noqa: UP031 - once a millisecond at most
            self._clock = (ms, stamp)
        return stamp

    def flush(self) -> None:
        """Write every pending line now."""
        lines, self._pending = self._pending, []
        if not lines:
            return
        try:
            self._stream.write("".join(lines))
            self._stream.flush()
        except (OSError, ValueError):
            pass

    def log(  # noqa: PLR0913 - one argument per access-line field; no record object per request on the hot path
        self,
        method: str,
        path: str,
        status: int,
        started: float,
        request_id: str,
        service: str,
        instance: str,
        nbytes: int,
        client: str,
        error: str | None = None,
        retry_refused: str | None = None,
        trace_id: str | None = None,
        bytes_in: int | None = None,
    ) -> None:
        """Write one line describing a finished request; ``started`` is a ``perf_counter`` value.

        The proxy passes the fields by position (``exchange.log_access``): matching thirteen
        keywords costs more than the line's dict.
        """
        if not self._enabled:
            return
        pending = self._pending
        # Lines of one loop turn share the turn's first timestamp (nginx also reads its clock once
        # per event-loop turn); ``duration_ms`` is measured for each line.
        stamp = self._clock[1] if pending else self._timestamp()
        line: dict[str, Any] = {
            "timestamp": stamp,
            "level": "info" if status < 500 else "warning",
            "logger": "msa_gateway.access",
            "event": "request",
            "method": method,
            "path": path if len(path) <= MAX_PATH else path[:MAX_PATH] + "...",
            "status": status,
            # rounded to the µs; a third of round(x, 3)'s cost
            "duration_ms": int((perf_counter() - started) * 1_000_000.0 + 0.5) / 1000,
            "request_id": request_id,
            "service": service,
            "instance": instance,
            "bytes": nbytes,
            "client": client,
        }
        if error is not None:
            line["error"] = error
        if retry_refused is not None:
            line["retry_refused"] = retry_refused
        if trace_id is not None:
            line["trace_id"] = trace_id
        if bytes_in is not None:  # a WebSocket connection: ``bytes`` went to the client, these came from it
            line["event"] = "websocket"
            line["bytes_in"] = bytes_in
        if self._console:
            extras = " ".join(
                f"{k}={v}" for k, v in line.items() if k not in {"timestamp", "level", "logger"}
            )
            text = f"{line['timestamp']} {line['level'].upper():<7} msa_gateway.access: {extras}\n"
        else:
            text = dumps(line, option=OPT_APPEND_NEWLINE).decode()
        pending.append(text)
        if len(pending) == 1:
            self._flush_soon()

    def _flush_soon(self) -> None:
        """Flush at the end of this loop turn (at once without a running loop).

        The loop is kept while it runs: on Python 3.11 each ``get_running_loop()`` makes a
        ``getpid`` system call, which at one request per turn was one more per request.
        """
        loop = self._loop
        if loop is None or not loop.is_running():
            try:
                loop = self._loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop: write at once
                self._loop = None
                self.flush()
                return
        loop.call_soon(self.flush)


__all__ = ["AccessLog", "ConsoleFormatter"]
