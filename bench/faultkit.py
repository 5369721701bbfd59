"""Shared parts of the fault scenarios (``bench.faults``): the gateway config, waiting for it,
reading its metrics and logs, and the per-phase table.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import orjson
import yaml
from tests.support.backend import BackendProcess
from tests.support.gateway import GatewayProcess

from bench.openloop import Shot, phase_stats
from msa_gateway.settings import Settings

SERVICE = "svc"
PASS, FAIL = "PASS", "FAIL"
METRIC_PREFIXES = (
    "gateway_retries_total",
    "gateway_instance_ejections_total",
    "gateway_overflow_total",
    "gateway_upstream_errors_total",
)
Check = tuple[str, bool]


def operator_options(*, read_timeout: float = 5.0, retry_on_timeout: bool = False) -> dict[str, Any]:
    """Return the service options a careful operator would set (retries left at their defaults).

    Probes every second with a 0.5 s timeout; two failed probes take an instance out (one lost
    probe should not), one passing probe brings it back. Connect timeout 1 s on a LAN, a read
    timeout that bounds a stuck instance, and a total deadline per request.
    """
    options: dict[str, Any] = {
        "health_check": {
            "path": "/health",
            "interval": 1.0,
            "timeout": 0.5,
            "healthy_threshold": 1,
            "unhealthy_threshold": 2,
        },
        "timeouts": {"connect": 1.0, "read": read_timeout, "total": 10.0},
    }
    if retry_on_timeout:
        options["retry"] = {"retry_on_timeout": True}
    return options


def client_name(client: str | None) -> str:
    """Return the upstream client the gateway uses for ``client`` (None: the gateway's default)."""
    if client is not None:
        return client
    default: str = Settings.model_fields["upstream_client"].default
    return default


def upstream_env(client: str | None) -> dict[str, str]:
    """Return the environment that makes ``msa-gateway run`` use ``client`` (None: its default)."""
    return {} if client is None else {"UPSTREAM_CLIENT": client}


def gateway_config(backends: Sequence[BackendProcess], options: Mapping[str, Any]) -> dict[str, Any]:
    """Return a gateway YAML dict with one service ``svc`` over ``backends``."""
    instances = [{"id": b.name, "host": b.host, "port": b.port} for b in backends]
    return {"services": {SERVICE: {"instances": instances, **options}}}


def describe_options(options: Mapping[str, Any], client: str) -> list[str]:
    """Return the options as YAML lines, with the defaults that apply to what is not set."""
    lines = [f"  (environment) UPSTREAM_CLIENT={client}"]
    lines += ["  " + line for line in yaml.safe_dump(dict(options), sort_keys=False).splitlines()]
    if "retry" not in options:
        lines.append("  retry: defaults (max_retries 2, retry_on_reset true, retry_on_timeout false,")
        lines.append("         budget 20% of requests in flight, at least 3)")
    lines.append("  outlier: defaults (eject after 5 consecutive gateway failures for 30 s x n, max 50%)")
    lines.append("  panic_threshold: default 50%")
    return lines


async def wait_serving(gw: GatewayProcess, healthy: int, timeout: float = 20.0) -> None:
    """Wait until ``healthy`` instances of ``svc`` passed an active probe in the gateway."""
    deadline = time.monotonic() + timeout
    last: Any = None
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError, KeyError):
                async with session.get(gw.url + "/services") as resp:
                    last = await resp.json()
                    instances = last["services"][SERVICE]["instances"]
                    if sum(1 for i in instances if i["health"]["status"] == "healthy") >= healthy:
                        return
            await asyncio.sleep(0.05)
    raise TimeoutError(f"gateway not serving {healthy} healthy instances: {last}\n{gw.output()[-2000:]}")


async def metrics_excerpt(gw: GatewayProcess) -> list[str]:
    """Return the retry, ejection, overflow and upstream-error samples of ``/metrics``."""
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/metrics") as resp:
        text = await resp.text()
    return [line for line in text.splitlines() if line.startswith(METRIC_PREFIXES)]


def metric_sum(lines: Sequence[str], name: str) -> float:
    """Return the sum of the samples of ``name`` in ``lines`` (Prometheus text format)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + "{"))


def merged_counts(*counts: Mapping[str, int]) -> Counter[str]:
    """Return the per-request-id deliveries summed over backends (and process lifetimes)."""
    total: Counter[str] = Counter()
    for c in counts:
        total.update(c)
    return total


def log_events(output: str, event: str) -> list[dict[str, Any]]:
    """Return the gateway's JSON log records whose ``event`` is ``event``."""
    found = []
    for line in output.splitlines():
        if line.startswith("{") and event in line:
            with contextlib.suppress(orjson.JSONDecodeError):
                record = orjson.loads(line)
                if record.get("event") == event:
                    found.append(record)
    return found


def log_records(output: str) -> list[dict[str, Any]]:
    """Return every JSON line the gateway printed (access lines and log records)."""
    records = []
    for line in output.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(orjson.JSONDecodeError):
                records.append(orjson.loads(line))
    return records


def failure_notes(shots: Sequence[Shot], output: str, limit: int = 10) -> list[str]:
    """Return, for the first ``limit`` failed requests, what the client and the gateway logged."""
    access = {r.get("request_id"): r for r in log_records(output) if r.get("logger") == "msa_gateway.access"}
    notes = []
    for shot in [s for s in shots if not s.ok][:limit]:
        line = access.get(shot.request_id)
        seen = (
            f"gateway: {line.get('status')} error={line.get('error')} instance={line.get('instance')} "
            f"after {line.get('duration_ms')} ms"
            + (f" retry_refused={line['retry_refused']}" if "retry_refused" in line else "")
            if line is not None
            else "gateway: no access line"
        )
        notes.append(f"{shot.request_id} due {shot.due:.3f} s: client got {shot.outcome}; {seen}")
    return notes


def gateway_warnings(output: str) -> Counter[str]:
    """Return how often the gateway logged each warning or error (access lines excluded)."""
    return Counter(
        str(r.get("event"))
        for r in log_records(output)
        if r.get("level") in ("warning", "error", "critical") and r.get("logger") != "msa_gateway.access"
    )


def wall_time(timestamp: str) -> float:
    """Return the Unix time of one of the gateway's ISO 8601 log timestamps."""
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True, slots=True)
class Phase:
    """A named span of the run, in seconds after the start."""

    name: str
    start: float
    end: float


def phase_rows(
    shots: Sequence[Shot], phases: Sequence[Phase], streams: Sequence[str], instances: Sequence[str]
) -> list[str]:
    """Return the per-phase table: count, failures, who answered and latency percentiles."""
    by = "".join(f" {'by ' + name:>6}" for name in instances)
    rows = [
        f"  {'phase':<24} {'method':<6} {'sent':>6} {'ok':>6} {'failed':>6}{by} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    ]
    for phase in phases:
        label = f"{phase.start:g}-{phase.end:g} s {phase.name}"
        for name in streams:
            st = phase_stats(shots, name, phase.start, phase.end)
            served = Counter(
                s.instance for s in shots if s.stream == name and phase.start <= s.due < phase.end
            )
            by = "".join(f" {served[i]:>6}" for i in instances)
            rows.append(
                f"  {label:<24} {name:<6} {st.count:>6} {st.ok:>6} {st.failed:>6}{by} "
                f"{st.p50 * 1000:>8.1f} {st.p99 * 1000:>8.1f} {st.max * 1000:>8.1f}"
            )
    return rows


def check_lines(checks: Sequence[Check]) -> list[str]:
    """Return ``PASS``/``FAIL`` lines for ``checks``."""
    return [f"  {PASS if ok else FAIL}  {text}" for text, ok in checks]
