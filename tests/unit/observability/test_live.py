"""live.py: per-second rates from the request counters (deltas, 5xx share, p99 from buckets)."""

from __future__ import annotations

import pytest

from msa_gateway.observability.live import IDLE, RateWindow, ServiceRates, quantile
from msa_gateway.observability.metrics import BUCKETS
from msa_gateway.observability.requests import RequestStats


def test_quantile_interpolates_inside_the_bucket_holding_the_rank() -> None:
    # 100 observations: 50 in (0, 0.1], 50 in (0.1, 0.2]; the 99th is 98% into the second bucket.
    assert quantile(0.99, (0.1, 0.2), [50, 50, 0]) == pytest.approx(0.1 + 0.1 * 49 / 50)
    assert quantile(0.5, (0.1, 0.2), [100, 0, 0]) == pytest.approx(0.05)


def test_quantile_in_the_inf_bucket_is_the_highest_finite_bound_and_empty_is_none() -> None:
    assert quantile(0.99, (0.1, 0.2), [1, 0, 99]) == 0.2
    assert quantile(0.99, (0.1, 0.2), [0, 0, 0]) is None


def test_first_tick_is_a_baseline_then_rates_are_deltas_per_second() -> None:
    stats = RequestStats(BUCKETS)
    window = RateWindow(stats)
    for _ in range(1000):  # before the baseline: never counted in a rate
        stats.count("api", "GET", 200)
    assert window.tick(10.0) is None
    for i in range(100):
        stats.count("api", "GET", 503 if i < 5 else 200)
        stats.histogram("api").observe(0.004 if i < 98 else 0.8)
    rates = window.tick(12.0)
    assert rates is not None
    api = rates["api"]
    assert api.rps == pytest.approx(50.0)  # 100 answers over 2 s
    assert api.error_ratio == pytest.approx(0.05)
    assert api.p99_ms is not None and 500.0 < api.p99_ms <= 1000.0  # the 99th of 100 is one of the slow two


def test_a_service_without_answers_in_the_tick_is_idle() -> None:
    stats = RequestStats(BUCKETS)
    window = RateWindow(stats)
    stats.count("api", "GET", 200)
    stats.histogram("api").observe(0.01)
    window.tick(1.0)
    assert window.tick(2.0) == {"api": IDLE}
    assert IDLE.as_dict() == {"rps": 0.0, "error_ratio": None, "p99_ms": None}


def test_reset_starts_a_new_baseline() -> None:
    stats = RequestStats(BUCKETS)
    window = RateWindow(stats)
    window.tick(1.0)
    stats.count("api", "GET", 200)
    window.reset()
    assert window.tick(2.0) is None
    assert window.tick(3.0) == {"api": IDLE}


def test_as_dict_rounds_for_display() -> None:
    assert ServiceRates(1 / 3, 1 / 3, 12.3456).as_dict() == {
        "rps": 0.33,
        "error_ratio": 0.3333,
        "p99_ms": 12.35,
    }
