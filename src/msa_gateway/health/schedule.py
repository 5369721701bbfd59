"""When to probe what: stable phases, a clock that can run slow, and the CPU budget.

Pure logic, no I/O (``scheduler.py`` runs it). Each instance key hashes to a phase in [0, 1); the
instance is probed at ``(phase + k) * interval`` for every whole ``k``, so 20,000 instances with
a 5 s interval go out 4,000 a second, evenly, and an instance keeps its slot across registry
swaps and restarts. Slots are in *virtual* seconds: when probing costs more CPU than its budget,
``VirtualClock`` runs slower than real time, which stretches every interval alike and keeps the
spread even. ``Budget`` decides by how much.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
from dataclasses import dataclass, field

FIRST_SPREAD = 0.2  # seconds over which the first probes of a few new instances go out
INITIAL_COST = 0.0003  # seconds of CPU per probe assumed until measured
HEADROOM = 1.1  # when stretching, aim 10% below the budget
CHANGE = 0.15  # a stretch changes only when it is off by more than this share
LAG_SLOW = 0.05  # seconds of event-loop lag in the last second that slow probing down
LAG_UP, LAG_DOWN, LAG_MAX = 1.5, 1.2, 8.0  # lag factor: x1.5 a lagging second, /1.2 a calm one, at most 8


def phase_of(key: str) -> float:
    """Return the stable phase of ``key`` in [0, 1): the same in every process and run."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def next_slot(phase: float, interval: float, after: float) -> float:
    """Return the first time ``(phase + k) * interval`` strictly after ``after``."""
    k = math.floor(after / interval - phase) + 1
    slot = (phase + k) * interval
    return slot if slot > after else slot + interval


class VirtualClock:
    """Seconds that run ``1 / stretch`` times as fast as real ones."""

    def __init__(self, now: float) -> None:
        self.real = now
        self.virtual = 0.0
        self.stretch = 1.0

    def advance(self, now: float) -> float:
        """Move to real time ``now``; return the virtual time."""
        if now > self.real:
            self.virtual += (now - self.real) / self.stretch
            self.real = now
        return self.virtual

    def set_stretch(self, now: float, stretch: float) -> None:
        """From ``now`` on, run ``stretch`` times slower than real time."""
        self.advance(now)
        self.stretch = stretch

    def real_delay(self, virtual: float) -> float:
        """Return the real seconds until virtual time ``virtual`` (0 when past)."""
        return max(0.0, (virtual - self.virtual) * self.stretch)


@dataclass(slots=True)
class Slot:
    """One instance's place in the schedule."""

    key: str
    interval: float
    phase: float
    gen: int = 0  # which add() made it: heap entries of an older one are dropped
    busy: bool = False  # queued or in flight: a slot that comes meanwhile is skipped


@dataclass(slots=True)
class Schedule:
    """A heap of due times (virtual seconds), one regular entry per instance plus extra probes."""

    slots: dict[str, Slot] = field(default_factory=dict)
    rate: float = 0.0  # probes per virtual second the slots ask for
    skipped: int = 0
    # (due, seq, key, gen, extra): atoms only, so the garbage collector never has to walk them
    _heap: list[tuple[float, int, str, int, bool]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def add(self, key: str, interval: float, now: float, first_within: float) -> Slot:
        """Schedule ``key`` every ``interval``: first probe within ``first_within``, then on its phase."""
        slot = Slot(key, interval, phase_of(key), next(self._seq))
        self.remove(key)
        self.slots[key] = slot
        self.rate += 1.0 / interval
        first = now + slot.phase * min(interval, first_within)
        self._push(first, slot, extra=True)
        self._push(next_slot(slot.phase, interval, first + interval / 2), slot, extra=False)
        return slot

    def remove(self, key: str) -> None:
        """Stop scheduling ``key`` (its heap entries are dropped when they come up)."""
        slot = self.slots.pop(key, None)
        if slot is not None:
            self.rate -= 1.0 / slot.interval
            if not self.slots:
                self.rate = 0.0  # no float dust left behind

    def again(self, key: str, at: float) -> None:
        """Probe ``key`` once more at ``at``, besides its regular slots."""
        slot = self.slots.get(key)
        if slot is not None:
            self._push(at, slot, extra=True)

    def due(self, now: float) -> list[Slot]:
        """Pop every entry due by ``now``; return the slots to probe now, marked busy."""
        out: list[Slot] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, key, gen, extra = heapq.heappop(heap)
            slot = self.slots.get(key)
            if slot is None or slot.gen != gen:
                continue  # removed or replaced
            if not extra:
                self.skipped += int((now - when) / slot.interval)  # whole slots the loop was too late for
                self._push(next_slot(slot.phase, slot.interval, max(when, now)), slot, extra=False)
            if slot.busy:
                self.skipped += 0 if extra else 1
                continue
            slot.busy = True
            out.append(slot)
        return out

    def next_due(self) -> float | None:
        """Return the virtual time of the earliest entry (None when empty)."""
        while self._heap and not self._current(self._heap[0][2], self._heap[0][3]):
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def _current(self, key: str, gen: int) -> bool:
        slot = self.slots.get(key)
        return slot is not None and slot.gen == gen

    def _push(self, when: float, slot: Slot, *, extra: bool) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), slot.key, slot.gen, extra))


class Budget:
    """The stretch that keeps probing within ``budget`` of a core and off a lagging event loop.

    ``cpu_stretch`` follows the measured CPU per probe against the budget. ``lag_factor`` grows
    1.5x for every second in which the gateway's loop ran ``LAG_SLOW`` late (a CPU-starved host
    makes the thread-time budget look fine while requests queue) and shrinks back 1.2x per calm
    second. ``stretch`` is their product.
    """

    def __init__(self, budget: float, cost: float = INITIAL_COST, alpha: float = 0.01) -> None:
        self.budget = budget
        self.cost = cost  # moving average of CPU seconds per probe
        self.alpha = alpha
        self.cpu_stretch = 1.0
        self.lag_factor = 1.0
        self.measured = 0  # probes measured so far

    @property
    def stretch(self) -> float:
        """Return how many times longer than configured every interval is."""
        return self.cpu_stretch * self.lag_factor

    def observe(self, cpu: float) -> None:
        """Count one probe that took ``cpu`` seconds of CPU."""
        self.measured += 1
        alpha = max(self.alpha, 1.0 / self.measured)  # the first ones count fully
        self.cost += alpha * (cpu - self.cost)

    def allowed_rate(self) -> float:
        """Return the probes per second the budget pays for."""
        return self.budget / self.cost if self.cost > 0 else math.inf

    def update(self, rate: float, lag: float = 0.0) -> bool:
        """Set the stretch for ``rate`` probes/s asked and ``lag`` s of recent loop lag; say if it changed."""
        before = self.stretch
        need = rate * self.cost / self.budget
        if need <= 1.0 / HEADROOM or (self.cpu_stretch == 1.0 and need <= 1.0):
            self.cpu_stretch = 1.0
        else:
            new = max(1.0, need * HEADROOM)
            if self.cpu_stretch == 1.0 or abs(new / self.cpu_stretch - 1.0) > CHANGE:
                self.cpu_stretch = new
        if lag >= LAG_SLOW:
            self.lag_factor = min(LAG_MAX, self.lag_factor * LAG_UP)
        elif lag < LAG_SLOW / 2:
            self.lag_factor = max(1.0, self.lag_factor / LAG_DOWN)
        return self.stretch != before
