"""Fault scenario 2: one of two instances accepts requests and never answers (``mode=hang``).

The promise (issue 4): with ``timeouts.read`` = 1 s and ``retry.retry_on_timeout`` (opt-in),
GETs during the hang have p99 <= read timeout + 100 ms and none fails; once the outlier
detector ejects the hung instance (5 consecutive failures by default) it gets no more traffic.
The backend counts requests even while it hangs, so every request id that reached it is
known; the ejection time comes from the gateway's log line. Its active health check keeps
passing (``/health`` does not hang), so the instance stays ejected for the whole base
ejection time (30 s): only a probe that recovers from failing brings one back early.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tests.support.backend import running_backends
from tests.support.gateway import gateway_process

from bench.faultkit import (
    SERVICE,
    Check,
    Phase,
    check_lines,
    client_name,
    describe_options,
    failure_notes,
    gateway_config,
    gateway_warnings,
    log_events,
    metrics_excerpt,
    operator_options,
    phase_rows,
    upstream_env,
    wait_serving,
    wall_time,
)
from bench.openloop import OpenLoop, Shot, Stream, phase_stats

EJECTED_EVENT = "instance ejected by passive health check"
LOG_RESOLUTION = 0.002  # the log's timestamps have millisecond resolution; allow for rounding


@dataclass(frozen=True)
class HangReport:
    """What clients saw when instance ``a`` of two hung."""

    rate: float
    duration: float
    hang_at: float
    restore_at: float
    read_timeout: float
    options: Mapping[str, Any]
    client: str  # the gateway's upstream client (UPSTREAM_CLIENT)
    shots: Sequence[Shot]
    phases: Sequence[Phase]
    failed_gets: Counter[str]
    hang_p99: float  # seconds, GETs due during the hang
    ejected_after: float | None  # seconds after the hang began (None: never ejected)
    ejection_failures: int | None  # consecutive failures that triggered it
    hung_received: int  # requests that reached the hung instance after the hang began
    hung_after_ejection: Sequence[str]  # ids sent after the ejection that still reached it
    max_lag_ms: float
    metrics: Sequence[str]
    failure_notes: Sequence[str]  # the first failed requests, as the client and the gateway saw them
    warnings: Counter[str]  # the gateway's warning log events

    @classmethod
    def build(
        cls,
        *,
        rate: float,
        duration: float,
        hang_at: float,
        restore_at: float,
        read_timeout: float,
        options: Mapping[str, Any],
        shots: Sequence[Shot],
        hung_ids: Sequence[str],
        hang_wall: float,
        ejection: Mapping[str, Any] | None,
        metrics: Sequence[str] = (),
        gateway_log: str = "",
        client: str | None = None,
    ) -> HangReport:
        """Judge ``shots``: ``hung_ids`` reached the hung instance, ``ejection`` is the log record."""
        by_id = {s.request_id: s for s in shots}
        reached = [by_id[rid] for rid in hung_ids if rid in by_id and by_id[rid].sent_at >= hang_wall]
        eject_wall = wall_time(ejection["timestamp"]) if ejection is not None else None
        after = (
            sorted(s.request_id for s in reached if s.sent_at > eject_wall + LOG_RESOLUTION)
            if eject_wall is not None
            else []
        )
        return cls(
            rate=rate,
            duration=duration,
            hang_at=hang_at,
            restore_at=restore_at,
            read_timeout=read_timeout,
            options=options,
            client=client_name(client),
            shots=shots,
            phases=(
                Phase("both up", 0, hang_at),
                Phase("a hangs", hang_at, restore_at),
                Phase("a answers again", restore_at, duration),
            ),
            failed_gets=Counter(s.outcome for s in shots if not s.ok),
            hang_p99=phase_stats(shots, "GET", hang_at, restore_at).p99,
            ejected_after=None if eject_wall is None else eject_wall - hang_wall,
            ejection_failures=None if ejection is None else ejection.get("consecutive_failures"),
            hung_received=len(reached),
            hung_after_ejection=after,
            max_lag_ms=max((s.lag for s in shots), default=0.0) * 1000,
            metrics=tuple(metrics),
            failure_notes=failure_notes(shots, gateway_log),
            warnings=gateway_warnings(gateway_log),
        )

    @property
    def p99_limit(self) -> float:
        """Return the bound on the p99 during the hang: read timeout + 100 ms."""
        return self.read_timeout + 0.1

    def checks(self) -> list[Check]:
        """Return each promise of the scenario and whether it held."""
        ejected = self.ejected_after is not None
        how = (
            f", {self.ejected_after:.2f} s after the hang began, after {self.ejection_failures} "
            "consecutive failures"
            if self.ejected_after is not None
            else ""
        )
        return [
            (f"failed GETs: {sum(self.failed_gets.values())} {dict(self.failed_gets)}", not self.failed_gets),
            (
                f"p99 of GETs during the hang: {self.hang_p99 * 1000:.0f} ms "
                f"(limit: read timeout + 100 ms = {self.p99_limit * 1000:.0f} ms)",
                self.hang_p99 <= self.p99_limit,
            ),
            (f"hung instance ejected: {'yes' if ejected else 'no'}{how}", ejected),
            (
                f"requests reaching the hung instance after its ejection: {len(self.hung_after_ejection)} "
                f"(before it: {self.hung_received - len(self.hung_after_ejection)})",
                ejected and not self.hung_after_ejection,
            ),
        ]


def format_hang(r: HangReport) -> str:
    """Return the report of scenario 2 as text."""
    lines = [
        f"== 2. hung instance: 2 instances, {r.rate:g} GET/s for {r.duration:g} s, "
        f"a hangs from {r.hang_at:g} s to {r.restore_at:g} s",
        f"gateway config (services.{SERVICE}, besides the two instances):",
        *describe_options(r.options, r.client),
        "",
        *phase_rows(r.shots, r.phases, ("GET",), ("a", "b")),
        "",
        "checks:",
        *check_lines(r.checks()),
        f"  info  load generator: max lag behind schedule {r.max_lag_ms:.1f} ms",
        *(f"  failed  {note}" for note in r.failure_notes),
        "gateway metrics at the end:",
        *(f"  {m}" for m in r.metrics),
        "gateway warnings logged:",
        *(f"  {n} x {event}" for event, n in r.warnings.most_common()),
    ]
    return "\n".join(lines)


async def run_hang(
    rate: float = 200.0,
    duration: float = 30.0,
    hang_at: float = 10.0,
    restore_at: float = 20.0,
    read_timeout: float = 1.0,
    options: Mapping[str, Any] | None = None,
    client: str | None = None,
) -> HangReport:
    """Run scenario 2: GETs at ``rate``; instance ``a`` hangs from ``hang_at`` to ``restore_at``.

    ``options``: the service's YAML options (default: ``operator_options`` with ``read_timeout``
    and ``retry_on_timeout``).
    """
    if options is None:
        options = operator_options(read_timeout=read_timeout, retry_on_timeout=True)
    streams = [Stream("GET", "GET", f"/{SERVICE}/items", rate)]
    with (
        running_backends("a", "b") as (a, b),
        gateway_process(gateway_config([a, b], options), **upstream_env(client)) as gw,
    ):
        await wait_serving(gw, healthy=2)
        async with OpenLoop(gw.url, streams, duration, id_prefix="hang") as load:
            run = asyncio.create_task(load.run(), name="faults:hang-load")
            await load.until(hang_at)
            hang_wall = time.time()
            await asyncio.to_thread(a.control, mode="hang")
            await load.until(restore_at)
            await asyncio.to_thread(a.control, mode="normal")
            shots = await run
        hung_ids = list(a.counts())
        a_key = f"{SERVICE}/{a.name}@"
        metrics = await metrics_excerpt(gw)
        gateway_log = gw.output()
        ejections = [
            e for e in log_events(gateway_log, EJECTED_EVENT) if str(e.get("instance")).startswith(a_key)
        ]
    return HangReport.build(
        rate=rate,
        duration=duration,
        hang_at=hang_at,
        restore_at=restore_at,
        read_timeout=read_timeout,
        options=options,
        shots=shots,
        hung_ids=hung_ids,
        hang_wall=hang_wall,
        ejection=ejections[0] if ejections else None,
        metrics=metrics,
        gateway_log=gateway_log,
        client=client,
    )
