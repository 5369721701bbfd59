"""The health table: what active probes found out about each instance.

It outlives registry snapshots, so an instance that stays in the registry keeps its state
across swaps. ``HealthState.record`` is the pure state machine (consecutive results against
thresholds); the table notifies one listener when an instance flips.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

Status = Literal["unknown", "healthy", "unhealthy"]
log = logging.getLogger("msa_gateway.health")


def instance_key(service: str, instance_id: str, address: str) -> str:
    """Return the key that identifies one instance of one service at one address."""
    return f"{service}/{instance_id}" if instance_id == address else f"{service}/{instance_id}@{address}"


@dataclass(slots=True)
class HealthState:
    """Consecutive probe results of one instance and the status they imply."""

    status: Status = "unknown"
    successes: int = 0
    failures: int = 0
    last_checked: float | None = None
    last_latency_ms: float | None = None
    last_error: str | None = None
    since: float | None = None
    previous: Status = "unknown"  # the status before the last flip

    @property
    def eligible(self) -> bool:
        """Return whether the instance may receive traffic (unknown counts as yes)."""
        return self.status != "unhealthy"

    def record(
        self,
        ok: bool,
        *,
        healthy_threshold: int,
        unhealthy_threshold: int,
        now: float,
        latency_ms: float | None = None,
        error: str | None = None,
    ) -> bool:
        """Count one probe result; return True when the status flipped."""
        self.last_checked, self.last_latency_ms = now, latency_ms
        self.last_error = None if ok else error
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            target: Status = "healthy"
            flip = self.status != "healthy" and (
                self.status == "unknown" or self.successes >= healthy_threshold
            )
        else:
            self.successes, self.failures = 0, self.failures + 1
            target = "unhealthy"
            flip = self.status != "unhealthy" and self.failures >= unhealthy_threshold
        if flip:
            previous = self.previous = self.status
            self.status, self.since = target, now
            return previous != "unknown" or target == "unhealthy"
        return False


Listener = Callable[[str, str, HealthState], None]


class HealthTable:
    """Health state per instance key, plus one change listener."""

    def __init__(self) -> None:
        self._states: dict[str, HealthState] = {}
        self._listener: Listener | None = None

    def set_listener(self, listener: Listener | None) -> None:
        """Call ``listener(service, key, state)`` whenever an instance flips."""
        self._listener = listener

    def get(self, key: str) -> HealthState:
        """Return the state of ``key`` (unknown if never probed)."""
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = HealthState()
        return state

    def is_eligible(self, key: str) -> bool:
        """Return whether ``key`` may receive traffic."""
        state = self._states.get(key)
        return state is None or state.status != "unhealthy"

    def record(  # noqa: PLR0913 - keyword-only fields of one probe result
        self,
        service: str,
        key: str,
        ok: bool,
        *,
        healthy_threshold: int,
        unhealthy_threshold: int,
        now: float,
        latency_ms: float | None = None,
        error: str | None = None,
    ) -> bool:
        """Record one probe result for ``key``; notify and log when it flips."""
        state = self.get(key)
        before = state.status
        changed = state.record(
            ok,
            healthy_threshold=healthy_threshold,
            unhealthy_threshold=unhealthy_threshold,
            now=now,
            latency_ms=latency_ms,
            error=error,
        )
        if changed:
            log.log(
                logging.WARNING if state.status == "unhealthy" else logging.INFO,
                "instance health changed",
                extra={
                    "service": service,
                    "instance": key,
                    "from": before,
                    "to": state.status,
                    "error": error,
                },
            )
        if state.status != before and self._listener is not None:
            self._listener(service, key, state)
        return changed

    def assign(self, service: str, key: str, state: HealthState) -> None:
        """Take ``state`` as found by another process's probe (workers share one prober); notify on a flip."""
        before = self.get(key).status
        if state.status != before:
            state.previous = before  # what this process saw before, whatever the prober's history
        self._states[key] = state
        if state.status != before and self._listener is not None:
            self._listener(service, key, state)

    def retain(self, keys: Iterable[str]) -> None:
        """Forget every instance not in ``keys`` (they left the registry)."""
        keep = set(keys)
        for key in [k for k in self._states if k not in keep]:
            del self._states[key]

    def forget(self, keys: Iterable[str]) -> None:
        """Forget the instances in ``keys`` (they left the registry; a swap names only those)."""
        states = self._states
        for key in keys:
            states.pop(key, None)
