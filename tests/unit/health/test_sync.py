"""Ejections shared between processes: sent once, applied from elsewhere without echo, never un-ejecting."""

from __future__ import annotations

import time

from msa_gateway.health.outlier import Outcome, OutlierDetector
from msa_gateway.health.sync import EjectionSync
from msa_gateway.health.table import HealthState, HealthTable
from msa_gateway.model import OutlierConfig, ServiceOptions
from msa_gateway.proxy.resilience import ServiceGuard

KEYS = ["svc/a", "svc/b", "svc/c"]


def guards() -> dict[str, ServiceGuard]:
    options = ServiceOptions(outlier=OutlierConfig(consecutive_failures=1, base_ejection_time=30.0))
    return {"svc": ServiceGuard(options, KEYS)}


def test_a_local_ejection_is_sent_once() -> None:
    g = guards()
    sync = EjectionSync(g)
    assert g["svc"].outlier.report("svc/a", Outcome.GATEWAY_FAILURE, time.monotonic()) is not None
    sent = sync.poll()
    assert [(s, k) for s, k, _ in sent] == [("svc", "svc/a")]
    assert 29.0 < sent[0][2] <= 30.0
    assert sync.poll() == []


def test_an_ejection_from_elsewhere_applies_and_is_not_sent_back() -> None:
    g = guards()
    sync = EjectionSync(g)
    assert sync.apply("svc", "svc/b", 10.0)
    assert g["svc"].outlier.is_ejected("svc/b", time.monotonic())
    assert sync.poll() == []
    assert not sync.apply("svc", "svc/b", 10.0)  # the same hint read again changes nothing
    assert not sync.apply("nosuch", "nosuch/x", 10.0)


def test_a_shorter_ejection_from_elsewhere_never_shortens_one() -> None:
    det = OutlierDetector(OutlierConfig(consecutive_failures=1), ["k"])
    now = time.monotonic()
    det.report("k", Outcome.GATEWAY_FAILURE, now)
    until = det.ejected_until("k")
    assert not det.eject_until("k", now + 1.0)
    assert det.ejected_until("k") == until
    assert det.eject_until("k", until + 5.0)
    assert det.ejections_total == 1  # the count stays the deciding process's


def test_assigned_health_state_notifies_on_a_flip_only() -> None:
    table = HealthTable()
    flips: list[tuple[str, str]] = []
    table.set_listener(lambda service, key, state: flips.append((key, state.status)))
    table.assign("svc", "svc/a", HealthState(status="unhealthy", failures=2, last_checked=1.0))
    table.assign("svc", "svc/a", HealthState(status="unhealthy", failures=3, last_checked=2.0))
    assert flips == [("svc/a", "unhealthy")]
    assert table.get("svc/a").failures == 3
    assert not table.is_eligible("svc/a")
