"""Concurrency caps: per instance and per service, in flight and pending; overflow refuses at once."""

from __future__ import annotations

import pytest

from msa_gateway.model import LimitsConfig
from msa_gateway.proxy.limits import ConcurrencyLimits


def small() -> ConcurrencyLimits:
    return ConcurrencyLimits(
        LimitsConfig(
            max_requests_per_instance=2,
            max_pending_per_instance=1,
            max_requests_per_service=3,
            max_pending_per_service=2,
        )
    )


def scope(lim: ConcurrencyLimits) -> str | None:
    """Read ``last_overflow`` afresh (mypy would keep an earlier narrowing of the attribute)."""
    return lim.last_overflow


def test_defaults_follow_envoy_per_service() -> None:
    cfg = LimitsConfig()
    assert cfg.max_requests_per_service == 1024
    assert cfg.max_pending_per_service == 1024
    assert cfg.max_requests_per_instance == 256
    assert cfg.max_pending_per_instance == 256
    assert cfg.retry_after == 1


@pytest.mark.parametrize(
    "field",
    [
        "max_requests_per_instance",
        "max_pending_per_instance",
        "max_requests_per_service",
        "max_pending_per_service",
    ],
)
def test_config_rejects_caps_below_one(field: str) -> None:
    with pytest.raises(ValueError):
        LimitsConfig(**{field: 0})


def test_instance_cap_refuses_and_names_the_instance_scope() -> None:
    lim = small()
    assert lim.try_acquire("a")
    assert lim.try_acquire("a")
    assert not lim.try_acquire("a")
    assert scope(lim) == "instance"
    assert lim.overflow_total == 1
    assert lim.in_flight("a") == 2
    assert lim.requests == 2
    assert lim.try_acquire("b")  # another instance still has room


def test_service_cap_refuses_and_names_the_service_scope() -> None:
    lim = small()
    assert lim.try_acquire("a") and lim.try_acquire("a") and lim.try_acquire("b")
    assert not lim.try_acquire("c")
    assert scope(lim) == "service"
    assert lim.in_flight("c") == 0
    assert lim.requests == 3


def test_release_frees_the_slot() -> None:
    lim = small()
    lim.try_acquire("a")
    lim.try_acquire("a")
    lim.release("a")
    assert lim.in_flight("a") == 1 and lim.requests == 1
    assert lim.try_acquire("a")


def pooled(conns: int = 1) -> ConcurrencyLimits:
    """Caps where the pool holds ``conns`` connections per instance; past that, requests wait."""
    cfg = LimitsConfig(
        max_requests_per_instance=10,
        max_pending_per_instance=1,
        max_requests_per_service=100,
        max_pending_per_service=2,
    )
    return ConcurrencyLimits(cfg, connections_per_instance=conns)


def test_requests_beyond_the_pool_size_count_as_pending() -> None:
    lim = pooled(conns=1)
    assert lim.try_acquire("a")  # holds the one connection
    assert lim.pending == 0 and lim.pending_for("a") == 0
    assert lim.try_acquire("a")  # waits for it
    assert lim.pending == 1 and lim.pending_for("a") == 1
    lim.release("a")  # the first finishes: the waiter gets the connection
    assert lim.pending == 0 and lim.pending_for("a") == 0 and lim.in_flight("a") == 1


def test_pending_caps_per_instance_and_service() -> None:
    lim = pooled(conns=1)
    assert lim.try_acquire("a") and lim.try_acquire("a")  # one pending on a
    assert not lim.try_acquire("a")
    assert scope(lim) == "instance"
    assert lim.try_acquire("b") and lim.try_acquire("b")  # one pending on b: service pending = 2
    assert lim.try_acquire("c")  # c has a free connection: not pending, admitted
    assert not lim.try_acquire("c")  # would wait, but the service's wait queue is full
    assert scope(lim) == "service"
    assert lim.overflow_total == 2
    lim.release("a")
    assert lim.pending_for("a") == 0 and lim.pending == 1
    assert lim.try_acquire("c")


def test_configure_keeps_counts_and_recomputes_pending() -> None:
    lim = pooled(conns=2)
    for _ in range(3):
        assert lim.try_acquire("a")
    assert lim.pending == 1
    lim.configure(LimitsConfig(max_pending_per_instance=5), connections_per_instance=1)
    assert lim.in_flight("a") == 3 and lim.pending == 2
    assert lim.snapshot()["connections_per_instance"] == 1


def test_extra_releases_never_go_negative() -> None:
    lim = small()
    lim.release("a")
    assert lim.requests == 0 and lim.pending == 0
    lim.try_acquire("a")
    lim.release("a")
    lim.release("a")
    assert lim.in_flight("a") == 0 and lim.requests == 0


def test_release_of_a_forgotten_instance_still_frees_the_service_slot() -> None:
    lim = small()
    lim.try_acquire("a")
    lim.try_acquire("b")
    lim.reconcile(["b"])  # "a" is busy: kept for now
    assert lim.in_flight("a") == 1
    lim.release("a")
    lim.reconcile(["b"])
    assert "a" not in lim.snapshot()["instances"]  # type: ignore[operator]
    assert lim.requests == 1


def test_reconcile_forgets_idle_departed_instances() -> None:
    lim = small()
    lim.try_acquire("a")
    lim.release("a")
    lim.try_acquire("b")
    lim.reconcile(["b"])
    snap = lim.snapshot()
    assert snap["instances"] == {"b": {"requests": 1, "pending": 0}}
    assert snap["requests"] == 1


def test_snapshot_shows_caps_and_counts() -> None:
    lim = ConcurrencyLimits(small().config, connections_per_instance=1)
    lim.try_acquire("a")
    lim.try_acquire("a")
    snap = lim.snapshot()
    assert snap["requests"] == 2 and snap["pending"] == 1
    assert snap["max_requests_per_service"] == 3
    assert snap["max_pending_per_instance"] == 1
    assert snap["overflow_total"] == 0
