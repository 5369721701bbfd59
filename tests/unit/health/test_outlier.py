"""Outlier detection: consecutive failures, growing ejections, the ejected share, decay, reconcile."""

from __future__ import annotations

import pytest

from msa_gateway.health.outlier import (
    Ejection,
    Outcome,
    OutlierDetector,
    outcome_for_status,
)
from msa_gateway.model import OutlierConfig

F = Outcome.GATEWAY_FAILURE
S = Outcome.SUCCESS


def fail(det: OutlierDetector, key: str, times: int, now: float) -> list[Ejection]:
    """Report ``times`` gateway failures for ``key``; return the ejections they caused."""
    out = []
    for _ in range(times):
        ev = det.report(key, F, now)
        if ev is not None:
            out.append(ev)
    return out


def test_defaults_are_envoys_except_the_share() -> None:
    cfg = OutlierConfig()
    assert cfg.consecutive_failures == 5
    assert cfg.base_ejection_time == 30.0
    assert cfg.max_ejection_time == 300.0
    assert cfg.max_ejection_percent == 50.0
    assert cfg.always_eject_one is True
    assert cfg.decay_interval == 10.0
    assert cfg.enabled


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.SUCCESS),
        (404, Outcome.SUCCESS),
        (429, Outcome.SUCCESS),
        (500, Outcome.SERVER_ERROR),
        (501, Outcome.SERVER_ERROR),
        (502, Outcome.GATEWAY_FAILURE),
        (503, Outcome.GATEWAY_FAILURE),
        (504, Outcome.GATEWAY_FAILURE),
        (505, Outcome.SERVER_ERROR),
    ],
)
def test_outcome_for_status(status: int, outcome: Outcome) -> None:
    assert outcome_for_status(status) is outcome


@pytest.mark.parametrize(
    "kwargs",
    [
        {"consecutive_failures": -1},
        {"base_ejection_time": 0},
        {"base_ejection_time": 30.0, "max_ejection_time": 10.0},
        {"max_ejection_percent": 101},
        {"max_ejection_percent": -1},
        {"decay_interval": 0},
    ],
)
def test_config_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        OutlierConfig(**kwargs)  # type: ignore[arg-type]


def test_ejects_after_n_consecutive_gateway_failures() -> None:
    det = OutlierDetector(OutlierConfig(), ["a", "b"])
    assert fail(det, "a", 4, now=100.0) == []
    assert not det.is_ejected("a", 100.0)
    ev = det.report("a", F, 100.0)
    assert ev == Ejection("a", until=130.0, duration=30.0, multiplier=1, consecutive_failures=5)
    assert det.is_ejected("a", 100.0)
    assert det.is_ejected("a", 129.999)
    assert not det.is_ejected("b", 100.0)
    assert det.ejected_keys(100.0) == frozenset({"a"})
    assert det.ejections_total == 1


def test_success_resets_the_consecutive_counter() -> None:
    det = OutlierDetector(OutlierConfig(), ["a", "b"])
    fail(det, "a", 4, 0.0)
    assert det.report("a", S, 0.0) is None
    assert fail(det, "a", 4, 0.0) == []
    assert det.snapshot(0.0)["a"].consecutive_failures == 4
    assert det.report("a", F, 0.0) is not None


def test_succeeded_resets_the_counter_as_a_reported_success_does() -> None:
    det = OutlierDetector(OutlierConfig(), ["a", "b"])
    fail(det, "a", 4, 0.0)
    det.succeeded("a")
    det.succeeded("gone")  # an instance no longer tracked: nothing to reset
    assert det.snapshot(0.0)["a"].consecutive_failures == 0
    assert fail(det, "a", 4, 0.0) == []
    assert det.report("a", F, 0.0) is not None


def test_other_5xx_reset_the_counter_unless_count_all_5xx() -> None:
    det = OutlierDetector(OutlierConfig(consecutive_failures=2), ["a", "b"])
    det.report("a", F, 0.0)
    assert det.report("a", Outcome.SERVER_ERROR, 0.0) is None
    assert det.snapshot(0.0)["a"].consecutive_failures == 0

    det5 = OutlierDetector(OutlierConfig(consecutive_failures=2, count_all_5xx=True), ["a", "b"])
    assert det5.report("a", Outcome.SERVER_ERROR, 0.0) is None
    assert det5.report("a", Outcome.SERVER_ERROR, 0.0) is not None


def test_ignored_outcomes_change_nothing() -> None:
    det = OutlierDetector(OutlierConfig(consecutive_failures=2), ["a", "b"])
    det.report("a", F, 0.0)
    assert det.report("a", Outcome.IGNORED, 0.0) is None
    assert det.snapshot(0.0)["a"].consecutive_failures == 1
    assert det.report("a", F, 0.0) is not None


def test_unknown_keys_are_ignored() -> None:
    det = OutlierDetector(OutlierConfig(consecutive_failures=1), ["a", "b"])
    assert det.report("gone", F, 0.0) is None
    assert not det.is_ejected("gone", 0.0)
    assert det.active_probe_passed("gone", 0.0) is False
    assert "gone" not in det.snapshot(0.0)


def test_instance_returns_when_its_time_is_up_and_can_be_ejected_again_for_longer() -> None:
    det = OutlierDetector(OutlierConfig(), ["a", "b"])
    first = fail(det, "a", 5, 0.0)[0]
    assert first.until == 30.0
    assert not det.is_ejected("a", 30.0)
    assert det.ejected_keys(30.0) == frozenset()
    second = fail(det, "a", 5, 31.0)[0]
    assert (second.multiplier, second.duration, second.until) == (2, 60.0, 91.0)
    third = fail(det, "a", 5, 92.0)[0]
    assert (third.multiplier, third.duration) == (3, 90.0)


def test_ejection_time_is_capped_by_max_ejection_time() -> None:
    det = OutlierDetector(OutlierConfig(base_ejection_time=30.0, max_ejection_time=100.0), ["a", "b"])
    durations = []
    now = 0.0
    for _ in range(6):
        ev = fail(det, "a", 5, now)[0]
        durations.append(ev.duration)
        now = ev.until  # fail again the moment it returns: no decay
    assert durations == [30.0, 60.0, 90.0, 100.0, 100.0, 100.0]
    assert det.snapshot(now)["a"].multiplier == 4  # stops growing once the cap is reached


def test_failures_while_ejected_are_not_counted() -> None:
    det = OutlierDetector(OutlierConfig(), ["a", "b"])
    fail(det, "a", 5, 0.0)
    assert fail(det, "a", 20, 10.0) == []
    assert det.snapshot(10.0)["a"].consecutive_failures == 0
    assert det.ejections_total == 1
    # Back in service with a clean counter: four failures are not enough.
    assert fail(det, "a", 4, 30.0) == []


def test_multiplier_decays_one_step_per_interval_back_in_service() -> None:
    cfg = OutlierConfig(decay_interval=10.0)
    det = OutlierDetector(cfg, ["a", "b"])
    now = 0.0
    for _ in range(3):
        now = fail(det, "a", 5, now)[0].until
    assert det.snapshot(now)["a"].multiplier == 3  # returned at `now`
    assert det.snapshot(now + 9.9)["a"].multiplier == 3
    assert det.snapshot(now + 10.0)["a"].multiplier == 2
    assert det.snapshot(now + 25.0)["a"].multiplier == 1
    ev = fail(det, "a", 5, now + 25.0)[0]
    assert ev.multiplier == 2 and ev.duration == 60.0  # decayed 3 -> 1, then +1
    back = ev.until
    assert det.snapshot(back + 1000.0)["a"].multiplier == 0
    assert fail(det, "a", 5, back + 1000.0)[0].duration == 30.0


def test_multiplier_does_not_decay_while_ejected() -> None:
    det = OutlierDetector(OutlierConfig(base_ejection_time=30.0, max_ejection_time=300.0), ["a", "b"])
    fail(det, "a", 5, 0.0)
    assert det.snapshot(29.0)["a"].multiplier == 1


def test_active_probe_returns_an_ejected_instance_and_keeps_the_multiplier() -> None:
    det = OutlierDetector(OutlierConfig(), ["a", "b"])
    fail(det, "a", 5, 0.0)
    assert det.active_probe_passed("a", 5.0) is True
    assert not det.is_ejected("a", 5.0)
    assert det.ejected_keys(5.0) == frozenset()
    assert det.active_probe_passed("a", 6.0) is False  # already back
    ev = fail(det, "a", 5, 6.0)[0]
    assert ev.multiplier == 2 and ev.until == 66.0


def test_active_probe_clears_the_consecutive_counter() -> None:
    det = OutlierDetector(OutlierConfig(), ["a", "b"])
    fail(det, "a", 4, 0.0)
    assert det.active_probe_passed("a", 0.0) is False
    assert det.snapshot(0.0)["a"].consecutive_failures == 0


@pytest.mark.parametrize(
    ("instances", "percent", "expected_max"),
    [
        (1, 50.0, 1),  # at least one
        (2, 50.0, 1),
        (3, 50.0, 1),  # a second would make 66%
        (4, 50.0, 2),
        (5, 50.0, 2),
        (10, 50.0, 5),
        (10, 10.0, 1),
        (5, 10.0, 1),  # at least one, though 1/5 > 10%
        (4, 100.0, 4),
        (3, 0.0, 0),  # 0 disables ejection
    ],
)
def test_never_ejects_more_than_the_share_but_always_one(
    instances: int, percent: float, expected_max: int
) -> None:
    keys = [f"i{n}" for n in range(instances)]
    det = OutlierDetector(OutlierConfig(max_ejection_percent=percent), keys)
    for key in keys:
        fail(det, key, 5, 0.0)
    assert len(det.ejected_keys(0.0)) == expected_max
    assert det.ejections_total == expected_max
    assert det.overflow_total == instances - expected_max


def test_without_always_eject_one_the_share_is_strict() -> None:
    det = OutlierDetector(OutlierConfig(max_ejection_percent=10.0, always_eject_one=False), ["a", "b", "c"])
    assert fail(det, "a", 5, 0.0) == []
    assert det.overflow_total == 1
    big = OutlierDetector(
        OutlierConfig(max_ejection_percent=10.0, always_eject_one=False), list("abcdefghij")
    )
    assert len(fail(big, "a", 5, 0.0)) == 1


def test_refused_instance_is_ejected_once_the_share_allows_it() -> None:
    det = OutlierDetector(OutlierConfig(), ["a", "b"])
    fail(det, "a", 5, 0.0)
    assert fail(det, "b", 5, 1.0) == []
    assert det.overflow_total == 1
    # "a" returns at 30; the next failure of "b" (still over its threshold) ejects it.
    ev = det.report("b", F, 30.0)
    assert ev is not None and ev.key == "b"
    assert det.ejected_keys(30.0) == frozenset({"b"})


def test_expired_ejections_free_the_share() -> None:
    det = OutlierDetector(OutlierConfig(), ["a", "b"])
    fail(det, "a", 5, 0.0)
    assert det.active_probe_passed("a", 1.0)
    assert len(fail(det, "b", 5, 1.0)) == 1


def test_zero_consecutive_failures_disables_ejection() -> None:
    cfg = OutlierConfig(consecutive_failures=0)
    assert not cfg.enabled
    det = OutlierDetector(cfg, ["a", "b"])
    assert fail(det, "a", 100, 0.0) == []
    assert det.snapshot(0.0)["a"].consecutive_failures == 100


def test_snapshot_reports_each_instance() -> None:
    det = OutlierDetector(OutlierConfig(), ["a", "b", "c", "d"])
    fail(det, "a", 5, 10.0)
    fail(det, "b", 2, 10.0)
    snap = det.snapshot(20.0)
    assert set(snap) == {"a", "b", "c", "d"}
    a, b = snap["a"], snap["b"]
    assert (a.ejected, a.ejected_until, a.remaining, a.ejections, a.multiplier) == (True, 40.0, 20.0, 1, 1)
    assert (b.ejected, b.ejected_until, b.remaining, b.consecutive_failures) == (False, None, 0.0, 2)
    assert snap["c"].ejections == 0


def test_reconcile_forgets_departed_instances_and_keeps_the_rest() -> None:
    det = OutlierDetector(OutlierConfig(), ["a", "b", "c"])
    fail(det, "a", 5, 0.0)
    fail(det, "b", 3, 0.0)
    det.reconcile(["a", "b", "d"])
    assert set(det.snapshot(0.0)) == {"a", "b", "d"}
    assert det.is_ejected("a", 0.0)
    assert det.snapshot(0.0)["b"].consecutive_failures == 3
    det.reconcile(["b", "d"])
    assert not det.is_ejected("a", 0.0)
    assert det.ejected_keys(0.0) == frozenset()
    assert det.report("a", F, 0.0) is None
    assert len(det) == 2


def test_reconcile_changes_the_share_denominator() -> None:
    det = OutlierDetector(OutlierConfig(), ["a", "b", "c"])
    fail(det, "a", 5, 0.0)
    assert fail(det, "b", 5, 0.0) == []  # 2 of 3 would exceed 50%
    det.reconcile(["a", "b", "c", "d"])
    assert len(fail(det, "b", 1, 0.0)) == 1  # 2 of 4 is 50%


def test_ejected_keys_without_ejections_is_a_shared_empty_set() -> None:
    det = OutlierDetector(OutlierConfig(), ["a", "b"])
    assert det.ejected_keys(0.0) is det.ejected_keys(1.0)
