"""The health state machine and table."""

from __future__ import annotations

from typing import Any

from msa_gateway.health.table import HealthState, HealthTable, instance_key


def test_thresholds_flip_status() -> None:
    s = HealthState()
    kw: dict[str, Any] = {"healthy_threshold": 2, "unhealthy_threshold": 3}
    assert s.eligible and s.status == "unknown"
    assert not s.record(True, now=1, **kw)  # unknown -> healthy is not a change worth logging
    assert s.status in ("healthy",)
    assert not s.record(False, now=2, **kw)
    assert not s.record(False, now=3, **kw)
    assert s.eligible
    assert s.record(False, now=4, error="timeout", **kw)
    assert s.status == "unhealthy" and not s.eligible and s.last_error == "timeout" and s.since == 4
    assert not s.record(True, now=5, **kw)
    assert s.record(True, now=6, **kw)
    assert s.status == "healthy"


def test_unknown_instance_failing_first_probe_is_a_change() -> None:
    s = HealthState()
    assert s.record(False, now=1, healthy_threshold=1, unhealthy_threshold=1)
    assert s.status == "unhealthy"


def test_table_notifies_and_retains() -> None:
    t = HealthTable()
    seen: list[tuple[str, str, str]] = []
    t.set_listener(lambda svc, key, st: seen.append((svc, key, st.status)))
    k = instance_key("svc", "a", "h:1")
    t.record("svc", k, False, healthy_threshold=1, unhealthy_threshold=1, now=1)
    assert seen == [("svc", k, "unhealthy")]
    assert not t.is_eligible(k)
    t.retain([])
    assert t.is_eligible(k)


def test_instance_key_is_short_when_id_is_address() -> None:
    assert instance_key("s", "h:1", "h:1") == "s/h:1"
    assert instance_key("s", "id", "h:1") == "s/id@h:1"


def test_a_flip_remembers_the_status_before_it() -> None:
    s = HealthState()
    s.record(True, healthy_threshold=1, unhealthy_threshold=1, now=1)
    assert (s.previous, s.status) == ("unknown", "healthy")
    s.record(False, healthy_threshold=1, unhealthy_threshold=1, now=2)
    assert (s.previous, s.status) == ("healthy", "unhealthy")


def test_an_assigned_state_takes_this_process_s_previous_status() -> None:
    table = HealthTable()
    table.record("svc", "svc/a", False, healthy_threshold=1, unhealthy_threshold=1, now=1)
    table.assign("svc", "svc/a", HealthState(status="healthy", previous="unknown"))
    assert table.get("svc/a").previous == "unhealthy"
