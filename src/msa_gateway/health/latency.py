"""Latency as a health signal: a service's recent latency, and instances that stopped answering.

A hung instance (stopped, deadlocked, swapping) refuses nothing and resets nothing: the
error-based outlier detector never sees a failure until read timeouts fire, and new requests
keep going to it meanwhile. Two small pieces, one per service, on its ``ServiceGuard``:

* ``LatencyWindow`` keeps the time to the response head of the last ``size`` attempts; its
  percentiles (recomputed at most every ``refresh`` samples or seconds, so a request pays one
  list store) give hedging its delay and the ejection rule its yardstick.
* ``WaitTracker`` counts per instance the attempts waiting for a head and since when the
  instance owes an answer (the oldest wait it has not answered since). An instance that keeps
  a request waiting longer than ``latency_multiple`` x the service's p99 (at least
  ``latency_min``) without answering anything is *slow*: it gets no new requests until it
  answers again, which a waiting attempt does the moment a head arrives. When its last waits
  ended silent (timed out, or lost a hedge race they started first) it stays out for a hold
  that doubles per silent probe (at most 1 s or the threshold), then gets one request as a
  probe. Per attempt that is two dict lookups; the slow set is recomputed at most every
  threshold / 4.

Pure logic: the caller passes ``now`` from ``time.monotonic()``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable

from msa_gateway.model import OutlierConfig

MIN_SAMPLES = 20  # fewer recent samples than this give no percentile


class LatencyWindow:
    """The last ``size`` head latencies of one service, in seconds."""

    __slots__ = (
        "_cache",
        "_computed_at",
        "_count",
        "_next",
        "_refresh",
        "_refresh_seconds",
        "_samples",
        "_since",
    )

    def __init__(self, size: int = 512, refresh: int = 32, refresh_seconds: float = 1.0) -> None:
        self._samples: list[float] = [0.0] * size
        self._next = 0
        self._count = 0
        self._since = 0  # samples added since the cache was computed
        self._refresh = refresh
        self._computed_at = -math.inf
        self._cache: list[float] = []  # sorted copy
        self._refresh_seconds = refresh_seconds

    def add(self, seconds: float) -> None:
        """Record one attempt's time to its response head."""
        samples = self._samples
        samples[self._next] = seconds
        self._next = (self._next + 1) % len(samples)
        if self._count < len(samples):
            self._count += 1
        self._since += 1

    def __len__(self) -> int:
        return self._count

    def percentile(self, p: float, now: float) -> float | None:
        """Return the ``p``-th percentile (0-100) of the window, or None with too few samples."""
        if self._count < MIN_SAMPLES:
            return None
        if self._since >= self._refresh or now - self._computed_at >= self._refresh_seconds:
            self._cache = sorted(self._samples[: self._count])
            self._since = 0
            self._computed_at = now
        ordered = self._cache
        index = min(len(ordered) - 1, max(0, math.ceil(p / 100.0 * len(ordered)) - 1))
        return ordered[index]


class Wait(enum.Enum):
    """How an attempt stopped waiting for its head."""

    ANSWERED = "answered"  # the head came: the instance is alive
    SILENT = "silent"  # timed out, or lost a hedge race it started first: evidence of a hang
    DROPPED = "dropped"  # the gateway gave up for its own reasons (client gone, a hedge that lost)


class _Waiting:
    __slots__ = ("count", "hold_until", "owed", "strikes")

    def __init__(self) -> None:
        self.count = 0  # attempts waiting for a head
        self.owed: float | None = None  # start of the oldest wait not answered since
        self.hold_until = -math.inf  # idle but silent: no new request before this
        self.strikes = 0  # silent probes in a row (the hold doubles with each)


class WaitTracker:
    """Which instances keep requests waiting without answering (``slow``), per service."""

    __slots__ = ("_check_at", "_config", "_limit", "_slow", "_waiting", "enabled", "slow_total")

    def __init__(self, config: OutlierConfig | None = None) -> None:
        self._waiting: dict[str, _Waiting] = {}
        self._slow: frozenset[str] = _EMPTY
        self.slow_total = 0
        self.configure(config if config is not None else OutlierConfig())
        self._limit = self._config.latency_min

    def configure(self, config: OutlierConfig) -> None:
        """Apply new settings; attempts in flight keep counting."""
        self._config = config
        self.enabled = config.latency_multiple > 0  # latency ejection is on (read per request)
        self._check_at = -math.inf

    def started(self, key: str, now: float) -> None:
        """An attempt to ``key`` was sent and waits for its head."""
        state = self._waiting.get(key)
        if state is None:
            state = self._waiting[key] = _Waiting()
        if state.owed is None:
            state.owed = now
        state.count += 1

    def ended(self, key: str, now: float, how: Wait) -> None:
        """An attempt to ``key`` stopped waiting for its head."""
        state = self._waiting.get(key)
        if state is None:
            return
        state.count = max(0, state.count - 1)
        if how is Wait.ANSWERED:
            state.owed = None if state.count == 0 else now
            state.strikes = 0
            state.hold_until = -math.inf
            if key in self._slow:
                self._check_at = -math.inf  # back in rotation at the next pick
        elif how is Wait.DROPPED:
            if state.count == 0:
                state.owed = None
        elif state.count == 0 and state.owed is not None and now - state.owed > self._limit:
            # silent and idle now: let one probe through after a hold that doubles, capped
            state.hold_until = now + min(self._limit * 2**state.strikes, max(self._limit, 1.0))
            state.strikes = min(state.strikes + 1, 16)

    def threshold(self, p99: float | None) -> float:
        """Return how long an instance may keep a request waiting before it counts as slow."""
        cfg = self._config
        return cfg.latency_min if p99 is None else max(cfg.latency_min, cfg.latency_multiple * p99)

    @property
    def slow(self) -> frozenset[str]:
        """Return the keys found slow at the last check."""
        return self._slow

    def slow_keys(self, now: float, latency: LatencyWindow) -> tuple[frozenset[str], frozenset[str]]:
        """Return the slow keys at ``now`` and the ones that just became slow (for logs and metrics)."""
        if self._config.latency_multiple <= 0:
            return _EMPTY, _EMPTY
        if now < self._check_at:
            return self._slow, _EMPTY
        limit = self._limit = self.threshold(latency.percentile(99.0, now))
        self._check_at = now + limit / 4
        slow = frozenset(
            k
            for k, s in self._waiting.items()
            if s.owed is not None and now - s.owed > limit and (s.count or now < s.hold_until)
        )
        if slow:
            holds = [s.hold_until for s in self._waiting.values() if s.hold_until > now]
            self._check_at = min(self._check_at, *holds) if holds else self._check_at
        new = slow - self._slow
        self.slow_total += len(new)
        self._slow = slow
        return slow, new

    def reconcile(self, keys: Iterable[str]) -> None:
        """Forget instances that left the registry."""
        keep = set(keys)
        for key in [k for k in self._waiting if k not in keep]:
            del self._waiting[key]
        self._slow = self._slow & keep

    def waiting(self, key: str) -> int:
        """Return how many attempts to ``key`` wait for their head."""
        state = self._waiting.get(key)
        return 0 if state is None else state.count


_EMPTY: frozenset[str] = frozenset()
