"""Fault scenario 3: SIGTERM reaches a gateway process while it streams a long SSE response.

The promise (issue 4, item 7): the stream completes, new connections are refused, readiness
says 503 to whoever can still ask, and the process exits 0 before the drain limit
(``DRAIN_TIMEOUT``, default 30 s). Right after the signal this probes, every 10 ms, whether a
new connection is accepted and what ``/health/ready`` answers, and asks the same on a
keep-alive connection opened before the signal, so the report says exactly what a load
balancer would have seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from tests.support.backend import BackendProcess
from tests.support.gateway import gateway_process

from bench.faultkit import SERVICE, Check, check_lines, client_name, upstream_env

DEFAULT_DRAIN_TIMEOUT = 30.0  # Settings.drain_timeout
PROBE_EVERY = 0.01
PROBE_FOR = 2.0


@dataclass(frozen=True, slots=True)
class DrainReport:
    """What a streaming client, a prober and the process did around the SIGTERM."""

    events: int
    expected_events: int
    stream_complete: bool  # the response ended properly (not cut)
    stream_error: str | None
    term_after: float  # seconds after the stream request was sent
    stream_end_after_term: float
    idle_connection: str  # what /health/ready on a keep-alive connection opened before got
    probes: Sequence[tuple[float, str]]  # (seconds after SIGTERM, outcome) of new connections
    exit_code: int | None
    exit_after_term: float | None
    drain_limit: float
    client: str  # the gateway's upstream client (UPSTREAM_CLIENT)

    @property
    def first_refused(self) -> float | None:
        """Return when a new connection was first refused (seconds after SIGTERM)."""
        return next((t for t, outcome in self.probes if outcome == "refused"), None)

    @property
    def ready_answers(self) -> list[str]:
        """Return every HTTP status ``/health/ready`` answered after the SIGTERM."""
        outcomes = [o for _, o in self.probes] + [self.idle_connection]
        return [o for o in outcomes if o.isdigit()]

    def checks(self) -> list[Check]:
        """Return each promise of the scenario and whether it held."""
        refused = self.first_refused
        answers = self.ready_answers
        exited = self.exit_after_term
        return [
            (
                f"stream after SIGTERM: {self.events}/{self.expected_events} events, "
                + ("ended cleanly" if self.stream_complete else f"cut ({self.stream_error})")
                + f", {self.stream_end_after_term:.2f} s after SIGTERM",
                self.stream_complete and self.events == self.expected_events,
            ),
            (
                "new connections refused: "
                + (f"from {refused * 1000:.0f} ms after SIGTERM" if refused is not None else "never")
                + " (while the stream still ran)",
                refused is not None and refused < self.stream_end_after_term,
            ),
            (
                f"/health/ready after SIGTERM: {len(answers)} answers"
                + (f", all {answers[0]}" if answers and len(set(answers)) == 1 else f" {answers}"),
                all(a == "503" for a in answers),
            ),
            (
                f"exit code {self.exit_code}, "
                + (f"{exited:.2f} s after SIGTERM" if exited is not None else "did not exit")
                + f" (drain limit {self.drain_limit:g} s)",
                self.exit_code == 0 and exited is not None and exited < self.drain_limit,
            ),
        ]


def summarize_probes(probes: Sequence[tuple[float, str]]) -> str:
    """Return the probes as runs of equal outcomes: ``+1-88 ms: 503 x9; +98 ms on: refused x3``."""
    runs: list[tuple[float, float, str, int]] = []
    for t, outcome in probes:
        if runs and runs[-1][2] == outcome:
            start, _, _, n = runs[-1]
            runs[-1] = (start, t, outcome, n + 1)
        else:
            runs.append((t, t, outcome, 1))
    return "; ".join(f"+{a * 1000:.0f}-{b * 1000:.0f} ms: {o} x{n}" for a, b, o, n in runs) or "none"


def format_drain(r: DrainReport) -> str:
    """Return the report of scenario 3 as text."""
    lines = [
        f"== 3. graceful shutdown: SIGTERM {r.term_after:g} s into a "
        f"{r.expected_events}-event SSE stream through the gateway",
        f"  drain limit: DRAIN_TIMEOUT = {r.drain_limit:g} s; UPSTREAM_CLIENT={r.client}",
        f"  new connections after SIGTERM (every {PROBE_EVERY * 1000:.0f} ms, GET /health/ready): "
        + summarize_probes(r.probes),
        f"  GET /health/ready on a keep-alive connection opened before SIGTERM: {r.idle_connection}",
        "checks:",
        *check_lines(r.checks()),
    ]
    return "\n".join(lines)


async def _ask_ready(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, close: bool) -> str:
    """Send ``GET /health/ready``; return the status code, or what happened instead."""
    connection = b"close" if close else b"keep-alive"
    try:
        writer.write(
            b"GET /health/ready HTTP/1.1\r\nHost: gateway\r\nConnection: " + connection + b"\r\n\r\n"
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
    except asyncio.IncompleteReadError:
        return "closed without an answer"
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "no answer in 2 s"
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, TimeoutError):
        await asyncio.wait_for(reader.readexactly(length), 2.0)
    return head.split(b" ", 2)[1].decode("ascii")


async def _probe(port: int) -> str:
    """Open a new connection and ask ``/health/ready``; ``refused`` when nothing accepts."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
    except ConnectionRefusedError:
        return "refused"
    except (TimeoutError, OSError) as exc:
        return type(exc).__name__
    try:
        return await _ask_ready(reader, writer, close=True)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _probe_until_refused(port: int, t_term: float) -> list[tuple[float, str]]:
    loop = asyncio.get_running_loop()
    probes: list[tuple[float, str]] = []
    refused = 0
    while refused < 3 and loop.time() - t_term < PROBE_FOR:
        started = loop.time() - t_term
        outcome = await _probe(port)
        probes.append((started, outcome))
        refused = refused + 1 if outcome == "refused" else 0
        await asyncio.sleep(PROBE_EVERY)
    return probes


async def _read_stream(
    session: aiohttp.ClientSession, url: str, first: asyncio.Event
) -> tuple[int, str | None]:
    """Read the SSE stream; return the events received and the error that cut it (None: complete)."""
    events = 0
    try:
        async with session.get(url) as resp:
            if resp.status != 200:
                return 0, f"status {resp.status}"
            async for line in resp.content:
                if line.startswith(b"data: "):
                    events += 1
                    first.set()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return events, type(exc).__name__
    finally:
        first.set()
    return events, None


async def run_drain(
    n: int = 20,
    interval: float = 0.5,
    term_at: float = 2.0,
    drain_timeout: float | None = None,
    client: str | None = None,
) -> DrainReport:
    """Run scenario 3: stream ``n`` events ``interval`` s apart, SIGTERM the gateway at ``term_at`` s."""
    env = upstream_env(client)
    if drain_timeout is not None:
        env["DRAIN_TIMEOUT"] = str(drain_timeout)
    limit = DEFAULT_DRAIN_TIMEOUT if drain_timeout is None else drain_timeout
    loop = asyncio.get_running_loop()
    with BackendProcess("s") as backend:
        config = {
            "services": {
                SERVICE: {
                    "instances": [{"id": "s", "host": backend.host, "port": backend.port}],
                    "health_check": {"path": "/health", "interval": 1.0, "timeout": 0.5},
                }
            }
        }
        with gateway_process(config, **env) as gw:
            assert gw.proc is not None
            idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", gw.port)
            before = await _ask_ready(idle_reader, idle_writer, close=False)
            if before != "200":
                raise RuntimeError(f"gateway not ready before the SIGTERM: {before}\n{gw.output()[-2000:]}")
            timeout = aiohttp.ClientTimeout(total=None, sock_read=10)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                first = asyncio.Event()
                url = f"{gw.url}/{SERVICE}/stream?n={n}&interval={interval}"
                started = loop.time()
                reading = asyncio.create_task(_read_stream(session, url, first), name="drain:stream")
                await first.wait()
                await asyncio.sleep(max(0.0, started + term_at - loop.time()))
                gw.proc.send_signal(signal.SIGTERM)
                t_term = loop.time()
                idle, probes = await asyncio.gather(
                    _ask_ready(idle_reader, idle_writer, close=False),
                    _probe_until_refused(gw.port, t_term),
                )
                events, error = await reading
                stream_end = loop.time() - t_term
            idle_writer.close()
            exit_code: int | None
            try:
                exit_code = await asyncio.to_thread(gw.proc.wait, limit + 10.0)
                exit_after: float | None = loop.time() - t_term
            except Exception:
                exit_code, exit_after = None, None
    return DrainReport(
        events=events,
        expected_events=n,
        stream_complete=error is None,
        stream_error=error,
        term_after=term_at,
        stream_end_after_term=stream_end,
        idle_connection=idle,
        probes=tuple(probes),
        exit_code=exit_code,
        exit_after_term=exit_after,
        drain_limit=limit,
        client=client_name(client),
    )
