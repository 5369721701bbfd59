"""Issue 15's fault scenarios, shortened: a SIGSTOPped instance and Redis restarted empty.

``python -m bench.faults --only stall,regrow`` runs them at full length (150 GET/s + 50 POST/s)
and prints the tables; these run a few seconds at a lower rate and assert the same promises.
"""

from __future__ import annotations

from bench.regrow import format_regrow, run_regrow
from bench.stall import format_stall, run_stall


async def test_a_hung_instance_with_hedging_costs_neither_latency_nor_failures() -> None:
    report = await run_stall(hedging=True, rate=60.0, post_rate=20.0, duration=6.0, stop_at=2.0, stop_for=2.5)
    assert all(ok for _, ok in report.checks()), format_stall(report)
    assert report.hedges_sent >= 1, "requests sent to the hung instance before its ejection were hedged"


async def test_a_hung_instance_without_hedging_is_out_of_rotation_within_500ms() -> None:
    report = await run_stall(
        hedging=False, rate=60.0, post_rate=20.0, duration=6.0, stop_at=2.0, stop_for=2.5
    )
    assert all(ok for _, ok in report.checks()), format_stall(report)


async def test_redis_restarted_empty_under_heartbeats_fails_nothing_and_never_shrinks_the_table() -> None:
    report = await run_regrow(rate=60.0, post_rate=20.0, duration=8.0, restarts=(2.5, 5.5))
    assert all(ok for _, ok in report.checks()), format_regrow(report)
    assert report.recovering_logged == 2, format_regrow(report)
