"""One health probe: ``GET {health_path}`` on a fresh connection, as cheap in CPU as asyncio allows.

At 20,000 instances every 5 s the gateway sends 4,000 probes a second, so each one's cost is
the cost of health checking. A probe here is a bare ``asyncio.Protocol``: connect, write one
request (``Connection: close``), read until the status line and the end of the head, close. The
status decides (2xx/3xx passes); the body is not read. No client session, no pool, no header
parsing beyond the status line.

The timeout is a timer of the probe's own: a response that arrives in the same loop turn as the
timer still counts (a task-level timeout would cancel it). Every step of the probe, the
coroutine's and the protocol's, is timed with ``time.thread_time`` so the scheduler knows what
probing costs (``ProbeResult.cpu``) and can stay within its CPU budget.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import time
from collections.abc import Coroutine, Generator
from dataclasses import dataclass
from typing import Any, cast

from msa_gateway.model import Instance

MAX_HEAD = 16384  # bytes of response head read at most
USER_AGENT = "msa-gateway-health"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one probe; ``lag`` is the gateway's own loop lateness at its end."""

    ok: bool
    status: int | None
    latency_ms: float
    error: str | None = None
    cpu: float = 0.0  # seconds of this thread's CPU the probe took
    lag: float = 0.0

    @property
    def timed_out(self) -> bool:
        """Return whether the probe ended by its timeout."""
        return self.error == "timeout"


class Metered:
    """Await a coroutine and add the CPU time of each of its steps to ``cpu``."""

    __slots__ = ("coro", "cpu")

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro = coro
        self.cpu = 0.0

    def __await__(self) -> Generator[Any, Any, Any]:
        clock, coro = time.thread_time, self.coro
        value: Any = None
        error: BaseException | None = None
        while True:
            started = clock()
            try:
                step = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as stop:
                self.cpu += clock() - started
                return stop.value
            except BaseException:
                self.cpu += clock() - started
                raise
            self.cpu += clock() - started
            try:
                value, error = (yield step), None
            except BaseException as exc:
                value, error = None, exc


class _Probe(asyncio.Protocol):
    """Collect the response head of one request; ``done`` gets the status (or an error)."""

    def __init__(self, request: bytes, done: asyncio.Future[int]) -> None:
        self.request = request
        self.done = done
        self.head = bytearray()
        self.transport: asyncio.Transport | None = None
        self.cpu = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        started = time.thread_time()
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)
        self.cpu += time.thread_time() - started

    def data_received(self, data: bytes) -> None:
        started = time.thread_time()
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end >= 0 or len(self.head) > MAX_HEAD:
            self._finish(self.head[: end if end >= 0 else MAX_HEAD])
        self.cpu += time.thread_time() - started

    def eof_received(self) -> bool:
        self._finish(bytes(self.head))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionResetError("closed before a response"))

    def _finish(self, head: bytes | bytearray) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.done.done():
            return
        parts = bytes(head).split(b"\r\n", 1)[0].split(b" ", 2)
        if len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1].isdigit():
            self.done.set_result(int(parts[1]))
        else:
            self.done.set_exception(ValueError("invalid response"))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class HttpProber:
    """Send single probes; keeps nothing between them but a TLS context."""

    def __init__(self) -> None:
        self._tls: ssl.SSLContext | None = None

    def _tls_for(self, instance: Instance) -> ssl.SSLContext | None:
        if instance.scheme != "https":
            return None
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    async def probe(self, instance: Instance, path: str, timeout: float) -> ProbeResult:
        """Probe ``instance`` once now; never raises (but for cancellation)."""
        meter = Metered(self._probe(instance, path, timeout))
        result: ProbeResult = await meter
        return dataclasses.replace(result, cpu=meter.cpu + result.cpu)

    async def _probe(self, instance: Instance, path: str, timeout: float) -> ProbeResult:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        started = time.perf_counter()
        deadline = loop.time() + timeout
        done: asyncio.Future[int] = loop.create_future()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {instance.address}\r\nUser-Agent: {USER_AGENT}\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n"
        ).encode("latin-1")
        proto = _Probe(request, done)
        fired: list[float] = []  # how late the timer ran; [lateness, 1.0] when it cancelled us

        def expire() -> None:
            fired.append(loop.time() - deadline)
            if done.done():
                return  # the answer came in this same loop turn: it counts
            done.set_exception(TimeoutError())
            if proto.transport is None and task is not None:
                fired.append(1.0)
                task.cancel("probe timeout")  # still connecting: stop create_connection

        timer = loop.call_at(deadline, expire)
        error: str | None = None
        status: int | None = None
        try:
            await loop.create_connection(
                lambda: proto,
                instance.host,
                instance.port,
                ssl=self._tls_for(instance),
                server_hostname=instance.host if instance.scheme == "https" else None,
            )
            status = await done
        except asyncio.CancelledError:
            if len(fired) < 2 or task is None or task.uncancel() > 0:
                raise
            error = "timeout"
        except TimeoutError:
            error = "timeout"
        except ConnectionRefusedError:
            error = "connection refused"
        except (OSError, ValueError) as exc:
            error = str(exc) if isinstance(exc, ValueError) else type(exc).__name__
        finally:
            timer.cancel()
            _settle(done)
            if error is not None:
                proto.abort()
        latency_ms = (time.perf_counter() - started) * 1000
        ok = status is not None and 200 <= status < 400
        if status is not None and not ok:
            error = f"status {status}"
        lag = max(0.0, fired[0]) if fired else 0.0
        return ProbeResult(ok, status, latency_ms, error, proto.cpu, lag)


def _settle(done: asyncio.Future[int]) -> None:
    """Mark ``done``'s outcome as seen (or cancel it), so asyncio never logs an unretrieved error."""
    if not done.done():
        done.cancel()
    elif not done.cancelled():
        done.exception()
