"""Fault scenario 4: one of three instances is SIGSTOPped (hung: it accepts, never answers), then resumed.

The promise (issue 15): with ``hedging`` on, GETs due during the hang have p99 under 300 ms,
none fails, and hedges add under 10% upstream requests; with hedging off, latency ejection
(``outlier.latency_multiple``) stops new requests going to the hung instance within 500 ms.
No POST is delivered twice (POSTs are never hedged); a POST that went to the instance before it
was taken out waits for it, and fails (502, never delivered) if the resumed instance resets the
connection instead of answering. Active probes are off, so what takes the
instance out is the request path alone. A stopped process cannot count; it counts what was
sent to it once resumed (the requests wait in its sockets), so the deliveries per request id
are read after ``SIGCONT``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from tests.support.backend import running_backends
from tests.support.gateway import gateway_process

from bench.crash import POST_BODY
from bench.faultkit import (
    SERVICE,
    Check,
    Phase,
    check_lines,
    failure_notes,
    gateway_config,
    log_events,
    merged_counts,
    phase_rows,
    wait_serving,
    wall_time,
)
from bench.openloop import OpenLoop, Shot, Stream, phase_stats

SLOW_EVENT = "instance taken out of rotation: requests wait on it without an answer"
METRICS = ("gateway_hedges_total", "gateway_hedge_wins_total", "gateway_slow_ejections_total")


def stall_options(*, hedging: bool, delay: float | str = 0.05) -> dict[str, Any]:
    """Return the service options of the scenario: latency ejection on, hedging on or off."""
    options: dict[str, Any] = {
        "health_check": {"path": None},
        "timeouts": {"connect": 1.0, "read": 5.0, "total": 10.0},
        "outlier": {"latency_multiple": 5, "latency_min": 0.1},
    }
    if hedging:
        options["hedging"] = {"delay": delay, "max_hedges": 1}
    return options


@dataclass(frozen=True)
class StallReport:
    """What clients saw while instance ``c`` of three was stopped."""

    hedging: bool
    rate: float
    post_rate: float
    duration: float
    stop_at: float
    resume_at: float
    options: Mapping[str, Any]
    shots: Sequence[Shot]
    failed: Counter[str]  # "GET 504", ...
    hang_p99: float
    hedges_sent: float
    upstream_requests: int  # deliveries counted by the three backends
    ejected_after: float | None  # seconds from SIGSTOP to the latency ejection (None: never)
    reached_after_ejection: int  # GETs sent after the ejection that reached the hung instance
    posts_twice: int
    failed_posts_delivered: int  # POSTs answered with an error that an instance processed anyway
    metrics: Sequence[str]
    notes: Sequence[str]  # the first failed requests, as the client and the gateway saw them

    def checks(self) -> list[Check]:
        """Return each promise of the scenario and whether it held."""
        sent = len(self.shots)
        extra = self.hedges_sent / sent if sent else 0.0
        failed_gets = {k: n for k, n in self.failed.items() if k.startswith("GET")}
        failed_posts = sum(n for k, n in self.failed.items() if k.startswith("POST"))
        checks: list[Check] = [
            (f"failed GETs: {sum(failed_gets.values())} {failed_gets}", not failed_gets),
            (
                f"failed POSTs: {failed_posts}, of them delivered anyway: {self.failed_posts_delivered}",
                self.failed_posts_delivered == 0,
            ),
            (f"POSTs delivered twice: {self.posts_twice}", self.posts_twice == 0),
        ]
        if self.hedging:
            checks += [
                (
                    f"GET p99 during the hang: {self.hang_p99 * 1000:.0f} ms (limit 300 ms)",
                    self.hang_p99 < 0.3,
                ),
                (
                    f"hedges sent: {self.hedges_sent:.0f} = {extra:.1%} of {sent} requests (limit 10%)",
                    extra < 0.10,
                ),
            ]
        else:
            when = (
                "never" if self.ejected_after is None else f"{self.ejected_after * 1000:.0f} ms after SIGSTOP"
            )
            checks.append(
                (
                    f"hung instance out of rotation: {when} (limit 500 ms); "
                    f"GETs reaching it afterwards (probes): {self.reached_after_ejection}",
                    self.ejected_after is not None and self.ejected_after <= 0.5,
                )
            )
        return checks


def format_stall(r: StallReport) -> str:
    """Return the report of scenario 4 as text."""
    lines = [
        f"== 4. hung instance (SIGSTOP), hedging {'on' if r.hedging else 'off'}: 3 instances, "
        f"{r.rate:g} GET/s + {r.post_rate:g} POST/s for {r.duration:g} s, c stopped from {r.stop_at:g} s "
        f"to {r.resume_at:g} s",
        f"  options: {dict(r.options)}",
        *phase_rows(
            r.shots,
            (
                Phase("all up", 0, r.stop_at),
                Phase("c stopped", r.stop_at, r.resume_at),
                Phase("c resumed", r.resume_at, r.duration),
            ),
            ("GET", "POST"),
            ("a", "b", "c"),
        ),
        "checks:",
        *check_lines(r.checks()),
        f"  info  upstream requests counted by the backends: {r.upstream_requests}",
        *(f"  failed  {note}" for note in r.notes),
        *(f"  {m}" for m in r.metrics),
    ]
    return "\n".join(lines)


async def run_stall(
    *,
    hedging: bool,
    rate: float = 150.0,
    post_rate: float = 50.0,
    duration: float = 12.0,
    stop_at: float = 4.0,
    stop_for: float = 4.0,
    options: Mapping[str, Any] | None = None,
) -> StallReport:
    """Run scenario 4: GET and POST load; instance ``c`` is SIGSTOPped for ``stop_for`` seconds."""
    options = stall_options(hedging=hedging) if options is None else options
    resume_at = stop_at + stop_for
    streams = [
        Stream("GET", "GET", f"/{SERVICE}/items", rate),
        Stream("POST", "POST", f"/{SERVICE}/orders", post_rate, POST_BODY),
    ]
    with (
        running_backends("a", "b", "c") as (a, b, c),
        gateway_process(gateway_config([a, b, c], options)) as gw,
    ):
        await wait_serving(gw, healthy=0)
        assert c.proc is not None
        async with OpenLoop(gw.url, streams, duration, id_prefix="stall") as load:
            run = asyncio.create_task(load.run(), name="faults:stall-load")
            await load.until(stop_at)
            stop_wall = time.time()
            os.kill(c.proc.pid, signal.SIGSTOP)
            try:
                await load.until(resume_at)
            finally:
                os.kill(c.proc.pid, signal.SIGCONT)
            shots = await run
        await asyncio.sleep(0.5)  # let the resumed instance drain what waited in its sockets
        hung = c.counts()
        delivered = merged_counts(a.counts(), b.counts(), hung)
        metrics = await _metrics(gw.url)
        notes = failure_notes(shots, gw.output())
        ejections = [
            e for e in log_events(gw.output(), SLOW_EVENT) if str(e.get("instance", "")).startswith("svc/c")
        ]
    eject_wall = wall_time(ejections[0]["timestamp"]) if ejections else None
    by_id = {s.request_id: s for s in shots}
    posts = {s.request_id for s in shots if s.stream == "POST"}
    return StallReport(
        hedging=hedging,
        rate=rate,
        post_rate=post_rate,
        duration=duration,
        stop_at=stop_at,
        resume_at=resume_at,
        options=options,
        shots=shots,
        failed=Counter(f"{s.stream} {s.outcome}" for s in shots if not s.ok),
        hang_p99=phase_stats(shots, "GET", stop_at, resume_at).p99,
        hedges_sent=sum(
            float(m.rsplit(" ", 1)[1])
            for m in metrics
            if m.startswith("gateway_hedges_total{") and '"sent"' in m
        ),
        upstream_requests=sum(delivered.values()),
        ejected_after=None if eject_wall is None else eject_wall - stop_wall,
        reached_after_ejection=sum(
            1
            for rid in hung
            if rid in by_id
            and by_id[rid].stream == "GET"
            and eject_wall is not None
            and eject_wall < by_id[rid].sent_at < stop_wall + stop_for
        ),
        posts_twice=sum(1 for rid, n in delivered.items() if rid in posts and n > 1),
        failed_posts_delivered=sum(
            1 for s in shots if s.stream == "POST" and not s.ok and delivered[s.request_id]
        ),
        notes=notes,
        metrics=[m for m in metrics if 'result="sent"' in m or "wins" in m or "slow" in m],
    )


async def _metrics(url: str) -> list[str]:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        text = await resp.text()
    return [line for line in text.splitlines() if line.startswith(METRICS)]
