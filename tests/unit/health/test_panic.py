"""Panic threshold: below it balance over every instance; 0 means fail fast."""

from __future__ import annotations

import pytest

from msa_gateway.health.panic import choose, validate_threshold
from msa_gateway.model import DEFAULT_PANIC_THRESHOLD

ALL = ("a", "b", "c", "d")


def test_default_is_envoys_50_percent() -> None:
    assert DEFAULT_PANIC_THRESHOLD == 50.0


@pytest.mark.parametrize(
    ("eligible", "threshold", "panic"),
    [
        (("a", "b", "c", "d"), 50.0, False),
        (("a", "b"), 50.0, False),  # exactly 50% is not below it
        (("a",), 50.0, True),
        ((), 50.0, True),
        (("a", "b", "c"), 100.0, True),
        (("a", "b", "c", "d"), 100.0, False),
        (("a",), 25.0, False),
        ((), 1.0, True),
    ],
)
def test_panic_when_the_eligible_share_is_below_the_threshold(
    eligible: tuple[str, ...], threshold: float, panic: bool
) -> None:
    instances, in_panic = choose(ALL, eligible, threshold)
    assert in_panic is panic
    assert instances is (ALL if panic else eligible)


def test_two_instances_one_ejected_is_not_panic() -> None:
    choice = choose(("a", "b"), ("b",))
    assert choice == (("b",), False)


def test_threshold_zero_fails_fast_with_nothing_eligible() -> None:
    instances, panic = choose(ALL, (), 0.0)
    assert panic is False
    assert list(instances) == []


def test_threshold_zero_never_panics() -> None:
    assert choose(ALL, ("a",), 0.0) == (("a",), False)


def test_empty_service_is_not_panic() -> None:
    assert choose((), (), 50.0) == ((), False)


def test_works_with_any_sequence_type() -> None:
    everything = [1, 2, 3]
    instances, panic = choose(everything, [], 50.0)
    assert instances is everything and panic


@pytest.mark.parametrize("bad", [-0.1, 100.1])
def test_validate_threshold_rejects_non_percentages(bad: float) -> None:
    with pytest.raises(ValueError):
        validate_threshold(bad)


@pytest.mark.parametrize("good", [0.0, 50.0, 100.0])
def test_validate_threshold_accepts_percentages(good: float) -> None:
    assert validate_threshold(good) == good
