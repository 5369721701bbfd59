"""Benchmark results: medians over interleaved runs, ratios between configurations, the printed table."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.peers import PEER_NAMES
from bench.wrk import WrkResult

BUILTIN = ("direct", "nginx-proxy", "gateway")
CONFIGS = ("direct", "nginx-proxy", *PEER_NAMES, "gateway")  # every name that is not a gateway variant
FLOOR = "bare-asgi"  # gateway req/s over this one's is the ratio that holds across hosts
WORKLOADS = ("get", "post")


@dataclass(frozen=True, slots=True)
class Measurement:
    """One measured wrk run of one configuration and workload, with the CPU time its server used.

    ``other_cores`` is how many cores' worth of CPU the rest of the machine used meanwhile; ``steal_s`` the
    CPU seconds the hypervisor took from all cores, ``steal_share`` the worst share of a used core's time.
    """

    config: str
    workload: str
    run: int
    wrk: WrkResult
    cpu_s: float | None = None
    other_cores: float | None = None
    steal_s: float | None = None
    steal_share: float | None = None

    @property
    def cpu_us_per_request(self) -> float | None:
        """Return the server's CPU microseconds per completed request (None when unknown)."""
        if self.cpu_s is None or self.wrk.requests == 0:
            return None
        return self.cpu_s * 1e6 / self.wrk.requests


@dataclass(frozen=True, slots=True)
class Summary:
    """The median over runs of one configuration and workload; errors are summed over runs.

    ``other_cores`` is the worst run's CPU use by processes outside the benchmark, in cores; ``steal_share``
    the worst run's share of a used core's time lost to CPU steal.
    """

    config: str
    workload: str
    runs: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float | None
    other_cores: float | None
    socket_errors: int
    non_2xx_3xx: int
    steal_share: float | None = None

    @property
    def errors(self) -> int:
        """Return socket errors plus non-2xx/3xx responses over all runs."""
        return self.socket_errors + self.non_2xx_3xx


def summarize(measurements: Iterable[Measurement]) -> list[Summary]:
    """Group ``measurements`` by (workload, config) and take medians; order by workload, then config."""
    groups: dict[tuple[str, str], list[Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.workload, m.config), []).append(m)

    def order(key: tuple[str, str]) -> tuple[int, int, str, str]:
        w, c = key
        return (
            WORKLOADS.index(w) if w in WORKLOADS else len(WORKLOADS),
            CONFIGS.index(c) if c in CONFIGS else len(CONFIGS),
            w,
            c,
        )

    out = []
    for key in sorted(groups, key=order):
        ms = groups[key]
        cpus = [c for c in (m.cpu_us_per_request for m in ms) if c is not None]
        others = [m.other_cores for m in ms if m.other_cores is not None]
        steals = [m.steal_share for m in ms if m.steal_share is not None]
        out.append(
            Summary(
                config=key[1],
                workload=key[0],
                runs=len(ms),
                requests_per_s=statistics.median(m.wrk.requests_per_s for m in ms),
                p50_ms=statistics.median(m.wrk.p50_ms for m in ms),
                p99_ms=statistics.median(m.wrk.p99_ms for m in ms),
                cpu_us_per_request=statistics.median(cpus) if cpus else None,
                other_cores=max(others) if others else None,
                socket_errors=sum(m.wrk.socket_errors for m in ms),
                non_2xx_3xx=sum(m.wrk.non_2xx_3xx for m in ms),
                steal_share=max(steals) if steals else None,
            )
        )
    return out


def ratio(summaries: Sequence[Summary], workload: str, numerator: str, denominator: str) -> float | None:
    """Return req/s of ``numerator`` over ``denominator`` for ``workload`` (None if either is missing)."""
    by = {(s.workload, s.config): s for s in summaries}
    num, den = by.get((workload, numerator)), by.get((workload, denominator))
    if num is None or den is None or den.requests_per_s <= 0:
        return None
    return num.requests_per_s / den.requests_per_s


def ratios(summaries: Sequence[Summary]) -> dict[str, float]:
    """Return every available ``{workload}: gateway/X`` req/s ratio, X being nginx-proxy, direct or a peer."""
    out: dict[str, float] = {}
    for w in WORKLOADS:
        for den in ("nginx-proxy", "direct", *PEER_NAMES):
            r = ratio(summaries, w, "gateway", den)
            if r is not None:
                out[f"{w}: gateway/{den}"] = r
    return out


def cpu_ratios(summaries: Sequence[Summary]) -> dict[str, float]:
    """Return nginx-proxy's CPU per request over the gateway's, per workload.

    This is the req/s ratio both would reach if each saturated its core. nginx usually does not
    (wrk and the backends on core 0 limit it first), so this is the stricter number; it moves
    less than the req/s ratio when a neighbour slows core 0 down.
    """
    by = {(s.workload, s.config): s for s in summaries}
    out: dict[str, float] = {}
    for w in WORKLOADS:
        gw, ng = by.get((w, "gateway")), by.get((w, "nginx-proxy"))
        if gw and ng and gw.cpu_us_per_request and ng.cpu_us_per_request:
            out[f"{w}: nginx-proxy CPU/req over gateway CPU/req"] = (
                ng.cpu_us_per_request / gw.cpu_us_per_request
            )
    return out


def _over(num: float | None, den: float | None) -> float | None:
    return None if num is None or den is None or den <= 0 else num / den


def versus_gateway(summaries: Sequence[Summary]) -> dict[str, dict[str, float | None]]:
    """Return, for every variant (a configuration beyond ``CONFIGS``), the gateway's figures over its.

    Keys are ``{workload}: gateway/{variant}``; values the ratios of req/s, p99 and CPU us/req. With an
    older build as the variant: req/s above 1, p99 and CPU below 1 mean the current gateway is better.
    """
    by = {(s.workload, s.config): s for s in summaries}
    out: dict[str, dict[str, float | None]] = {}
    for s in summaries:
        gw = by.get((s.workload, "gateway"))
        if s.config in CONFIGS or gw is None:
            continue
        out[f"{s.workload}: gateway/{s.config}"] = {
            "requests_per_s": _over(gw.requests_per_s, s.requests_per_s),
            "p99_ms": _over(gw.p99_ms, s.p99_ms),
            "cpu_us_per_request": _over(gw.cpu_us_per_request, s.cpu_us_per_request),
        }
    return out


def paired_versus(measurements: Iterable[Measurement]) -> dict[str, dict[str, float | None]]:
    """Return, per variant, the median over runs of the gateway's figure over the variant's in the same run.

    The runs interleave, so a run's two rows saw the same host; on a host whose speed drifts between
    runs this is the steadier comparison (each config's own median may come from different runs).
    Keys and values as ``versus_gateway``'s.
    """
    by = {(m.workload, m.config, m.run): m for m in measurements}
    pairs: dict[str, list[tuple[Measurement, Measurement]]] = {}
    for (workload, config, run), m in by.items():
        gw = by.get((workload, "gateway", run))
        if config not in CONFIGS and gw is not None:
            pairs.setdefault(f"{workload}: gateway/{config}", []).append((gw, m))
    return {name: _paired(runs) for name, runs in pairs.items()}


def _paired(runs: list[tuple[Measurement, Measurement]]) -> dict[str, float | None]:
    def median_of(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    return {
        "requests_per_s": median_of([_over(g.wrk.requests_per_s, v.wrk.requests_per_s) for g, v in runs]),
        "p99_ms": median_of([_over(g.wrk.p99_ms, v.wrk.p99_ms) for g, v in runs]),
        "cpu_us_per_request": median_of([_over(g.cpu_us_per_request, v.cpu_us_per_request) for g, v in runs]),
    }


def format_versus(comparisons: dict[str, dict[str, float | None]]) -> list[str]:
    """Render ``versus_gateway``'s result, one line per workload and variant."""
    return [
        f"{name} = req/s x{_fmt(r['requests_per_s'], '.3f')}, p99 x{_fmt(r['p99_ms'], '.3f')}, "
        f"CPU us/req x{_fmt(r['cpu_us_per_request'], '.3f')}"
        for name, r in comparisons.items()
    ]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(summaries: Sequence[Summary]) -> str:
    """Render the summaries as an aligned text table with req/s ratio columns against nginx-proxy and direct.

    With ``bare-asgi`` measured, a column against it (the host-independent ratio); when variants were
    measured (configurations beyond ``CONFIGS``), a column against ``gateway`` too.
    """
    against = ["nginx-proxy", "direct"]
    if any(s.config == FLOOR for s in summaries):
        against.append(FLOOR)
    if any(s.config not in CONFIGS for s in summaries):
        against.append("gateway")
    header = (
        "workload",
        "config",
        "req/s",
        "p50 ms",
        "p99 ms",
        "CPU us/req",
        "other cores",
        "steal",
        "sock err",
        "non-2xx",
        *(f"x {name}" for name in against),
    )
    rows = [header]
    for s in summaries:
        rows.append(
            (
                s.workload.upper(),
                s.config,
                f"{s.requests_per_s:,.0f}",
                f"{s.p50_ms:.2f}",
                f"{s.p99_ms:.2f}",
                _fmt(s.cpu_us_per_request, ".0f"),
                _fmt(s.other_cores, ".2f"),
                _fmt(s.steal_share, ".1%"),
                str(s.socket_errors),
                str(s.non_2xx_3xx),
                *(_fmt(ratio(summaries, s.workload, s.config, name), ".3f") for name in against),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for n, r in enumerate(rows):
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def to_json(
    meta: dict[str, Any], measurements: Sequence[Measurement], summaries: Sequence[Summary]
) -> dict[str, Any]:
    """Return everything measured as plain JSON-ready data."""
    return {
        "meta": meta,
        "summaries": [{**asdict(s), "errors": s.errors} for s in summaries],
        "ratios": ratios(summaries),
        "cpu_ratios": cpu_ratios(summaries),
        "versus_gateway": versus_gateway(summaries),
        "runs": [
            {
                "config": m.config,
                "workload": m.workload,
                "run": m.run,
                "cpu_s": m.cpu_s,
                "cpu_us_per_request": m.cpu_us_per_request,
                "other_cores": m.other_cores,
                "steal_s": m.steal_s,
                "steal_share": m.steal_share,
                **asdict(m.wrk),
            }
            for m in measurements
        ],
    }
