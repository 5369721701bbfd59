"""A made-up wrk result for the report tests."""

from __future__ import annotations

from bench.wrk import WrkResult


def wrk_result(
    rps: float, p50: float = 1.0, p99: float = 2.0, requests: int = 1000, non2xx: int = 0
) -> WrkResult:
    """Return a wrk result with these figures (the other latencies copy p50 or p99)."""
    return WrkResult(
        requests=requests,
        duration_s=10.0,
        requests_per_s=rps,
        latency_avg_ms=p50,
        latency_max_ms=p99,
        p50_ms=p50,
        p75_ms=p50,
        p90_ms=p99,
        p99_ms=p99,
        non_2xx_3xx=non2xx,
    )
