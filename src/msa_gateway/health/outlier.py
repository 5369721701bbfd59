"""Passive health checks (outlier detection): eject instances that keep failing real traffic.

Pure logic, no I/O: the caller passes ``now`` from ``time.monotonic()``. One
``OutlierDetector`` per service. The semantics follow Envoy's consecutive-gateway-failure
detector (``envoy.config.cluster.v3.OutlierDetection``), with these choices:

* **What counts.** ``Outcome.GATEWAY_FAILURE`` (connect refused/reset/timeout, read timeout,
  502/503/504 from the instance) adds one to the instance's consecutive counter. Other 5xx
  (``Outcome.SERVER_ERROR``) count too only when ``count_all_5xx`` is set (Envoy's
  ``consecutive_5xx``); otherwise, as in Envoy's gateway-failure detector, they prove the
  instance answers and reset the counter like a success. ``Outcome.IGNORED`` (client gone,
  the gateway's own overflow) changes nothing. Results reported for an instance while it is
  ejected are not counted (they come from requests sent before the ejection, or panic mode).
* **Ejection time.** ``base_ejection_time`` x the ejection multiplier, capped by
  ``max_ejection_time``. Each ejection adds one to the multiplier; it never grows past the
  point where the cap is reached.
* **Decay.** As Envoy does every ``interval``, the multiplier drops by one for each full
  ``decay_interval`` the instance spends back in service. Computed lazily from the time it
  returned, so no timer is needed and the result is exact.
* **The cap on the ejected share.** An ejection goes ahead only if, counting it, at most
  ``max_ejection_percent`` of the service's instances are ejected. With ``always_eject_one``
  (default, Envoy's ``always_eject_one_host``; also what Envoy did before 1.31 since it compared
  the share *before* the new ejection) one instance may always be ejected when none is, so a
  service with one or two instances can still lose its bad one; panic mode (``panic.py``)
  then decides what to do if too few remain. ``max_ejection_percent == 0`` disables ejection.
  A refused ejection counts in ``overflow_total``; the instance is ejected by its next failure
  once the share allows it.
* **Return.** When ``ejected_until`` passes (lazily, nothing to call) or on
  ``active_probe_passed`` (Envoy's ``successful_active_health_check_uneject_host``), which also
  clears the consecutive counter. The multiplier survives both, so a flapping instance is
  ejected for longer each time until it stays healthy.

Per request, ``report`` and ``is_ejected`` are one dict lookup and a few attribute reads on a
``__slots__`` object (~0.2-0.5 µs); they allocate nothing unless an ejection happens.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from msa_gateway.model import OutlierConfig

NEVER = -math.inf


class Outcome(enum.IntEnum):
    """What one request to an instance taught us about it."""

    SUCCESS = 0
    SERVER_ERROR = 1  # a 5xx other than 502/503/504
    GATEWAY_FAILURE = 2  # connect refused/reset/timeout, read timeout, 502/503/504
    IGNORED = 3  # says nothing about the instance (client went away, local overflow)


GATEWAY_STATUSES = frozenset({502, 503, 504})


def outcome_for_status(status: int) -> Outcome:
    """Return the outcome of a response with ``status`` from an instance."""
    if status < 500:
        return Outcome.SUCCESS
    if status in GATEWAY_STATUSES:
        return Outcome.GATEWAY_FAILURE
    return Outcome.SERVER_ERROR


@dataclass(frozen=True, slots=True)
class Ejection:
    """An instance was just ejected: increment ``gateway_instance_ejections_total``."""

    key: str
    until: float
    duration: float
    multiplier: int
    consecutive_failures: int


@dataclass(frozen=True, slots=True)
class InstanceOutlierState:
    """What ``/services/{name}/health`` shows about one instance."""

    consecutive_failures: int
    ejections: int  # in the detector's lifetime
    multiplier: int  # after decay; the next ejection lasts base x (multiplier + 1)
    ejected: bool
    ejected_until: float | None  # on the caller's monotonic clock
    remaining: float  # seconds until it returns (0 when not ejected)


class _State:
    __slots__ = ("consecutive", "ejected_until", "ejections", "multiplier", "returned_at")

    def __init__(self) -> None:
        self.consecutive = 0
        self.ejections = 0
        self.multiplier = 0
        self.ejected_until = NEVER
        self.returned_at = NEVER


class OutlierDetector:
    """Consecutive-failure ejection for the instances of one service.

    Instances are identified by the caller's keys. Only known keys (given to the constructor
    or ``reconcile``) are tracked: reports about unknown keys (an instance that already left
    the registry) are ignored.
    """

    __slots__ = ("_cfg", "_ejected", "_states", "ejections_total", "overflow_total")

    def __init__(self, config: OutlierConfig | None = None, keys: Iterable[str] = ()) -> None:
        self._cfg = config if config is not None else OutlierConfig()
        self._states: dict[str, _State] = {key: _State() for key in keys}
        self._ejected: dict[str, float] = {}  # key -> ejected_until, pruned lazily
        self.ejections_total = 0
        self.overflow_total = 0  # ejections refused by max_ejection_percent

    @property
    def config(self) -> OutlierConfig:
        """Return the settings this detector applies."""
        return self._cfg

    def __len__(self) -> int:
        return len(self._states)

    def reconcile(self, keys: Iterable[str]) -> None:
        """Track exactly ``keys``: forget instances that left, keep the state of those that stayed."""
        keep = set(keys)
        states = self._states
        for key in [k for k in states if k not in keep]:
            del states[key]
            self._ejected.pop(key, None)
        for key in keep:
            if key not in states:
                states[key] = _State()

    def succeeded(self, key: str) -> None:
        """Count a success from ``key`` (``report`` with SUCCESS, minus the clock: the common case).

        While ejected its run of failures is already 0 and failures are ignored, so the reset is exact.
        """
        state = self._states.get(key)
        if state is not None:
            state.consecutive = 0

    def report(self, key: str, outcome: Outcome, now: float) -> Ejection | None:
        """Count the result of one request to ``key``; return the ejection it caused, if any."""
        state = self._states.get(key)
        if state is None or outcome is Outcome.IGNORED or state.ejected_until > now:
            return None
        if outcome is Outcome.SUCCESS or (outcome is Outcome.SERVER_ERROR and not self._cfg.count_all_5xx):
            state.consecutive = 0
            return None
        state.consecutive += 1
        threshold = self._cfg.consecutive_failures
        if threshold == 0 or state.consecutive < threshold:
            return None
        return self._try_eject(key, state, now)

    def _try_eject(self, key: str, state: _State, now: float) -> Ejection | None:
        cfg = self._cfg
        ejected = self._count_ejected(now)
        allowed = (ejected + 1) * 100.0 <= cfg.max_ejection_percent * len(self._states) + 1e-9
        if not allowed and not (cfg.always_eject_one and ejected == 0 and cfg.max_ejection_percent > 0):
            self.overflow_total += 1
            return None
        multiplier = min(self._decayed(state, now) + 1, cfg.max_multiplier)
        duration = min(cfg.base_ejection_time * multiplier, cfg.max_ejection_time)
        failures = state.consecutive
        state.multiplier = multiplier
        state.ejected_until = until = now + duration
        state.returned_at = until
        state.ejections += 1
        state.consecutive = 0
        self._ejected[key] = until
        self.ejections_total += 1
        return Ejection(key, until, duration, multiplier, failures)

    def _decayed(self, state: _State, now: float) -> int:
        """Return the multiplier after one decrement per full decay interval back in service."""
        if state.multiplier == 0 or state.ejected_until > now:
            return state.multiplier
        steps = int((now - state.returned_at) // self._cfg.decay_interval)
        return max(0, state.multiplier - steps)

    def _count_ejected(self, now: float) -> int:
        ejected = self._ejected
        expired = [k for k, until in ejected.items() if until <= now]
        for key in expired:
            del ejected[key]
        return len(ejected)

    def active_probe_passed(self, key: str, now: float) -> bool:
        """Return ``key`` to service after a passing active probe; return whether it was ejected."""
        state = self._states.get(key)
        if state is None:
            return False
        state.consecutive = 0
        if state.ejected_until <= now:
            return False
        state.ejected_until = state.returned_at = now
        self._ejected.pop(key, None)
        return True

    def eject_until(self, key: str, until: float) -> bool:
        """Keep ``key`` out until ``until`` as another process decided; return whether that extends it.

        Only ever ejects or lengthens an ejection (a hint never makes an instance eligible); the
        cap on the ejected share is the deciding process's, and ejection counts stay its own.
        """
        state = self._states.get(key)
        if state is None or until <= state.ejected_until:
            return False
        state.ejected_until = state.returned_at = until
        state.consecutive = 0
        self._ejected[key] = until
        return True

    def ejected_until(self, key: str) -> float:
        """Return when ``key``'s ejection ends on the monotonic clock (``NEVER`` when never ejected)."""
        state = self._states.get(key)
        return NEVER if state is None else state.ejected_until

    def is_ejected(self, key: str, now: float) -> bool:
        """Return whether ``key`` is ejected at ``now`` (unknown keys are not)."""
        state = self._states.get(key)
        return state is not None and state.ejected_until > now

    def ejected_keys(self, now: float) -> frozenset[str]:
        """Return the keys ejected at ``now`` (an empty shared set when none: no allocation)."""
        if not self._ejected or not self._count_ejected(now):
            return _EMPTY
        return frozenset(self._ejected)

    def snapshot(self, now: float) -> Mapping[str, InstanceOutlierState]:
        """Return the state of every tracked instance, for the health endpoint."""
        out: dict[str, InstanceOutlierState] = {}
        for key, s in self._states.items():
            ejected = s.ejected_until > now
            out[key] = InstanceOutlierState(
                consecutive_failures=s.consecutive,
                ejections=s.ejections,
                multiplier=self._decayed(s, now),
                ejected=ejected,
                ejected_until=s.ejected_until if ejected else None,
                remaining=s.ejected_until - now if ejected else 0.0,
            )
        return out


_EMPTY: frozenset[str] = frozenset()
