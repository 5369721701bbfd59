"""Keep the event loop polling for a short window after client traffic instead of sleeping (``BUSY_POLL_US``).

Why: on a virtual machine an idle vCPU halts, and waking it (an interrupt through the hypervisor)
costs tens of microseconds. At one connection the gateway pays that twice a request: while the
instance answers, and while the client sends its next request. Doing less work does not help there:
the loop only sleeps sooner (bench/README.md, "One connection and the sleeping vCPU").

With a window set, a request's bytes and a response's end keep the loop turning: one callback is
always scheduled, so the loop polls with a zero timeout, until the window has passed without new
client traffic. An answer that arrives within it is read without a wake-up. HAProxy's
``busy-polling`` makes the same trade but never sleeps; here the loop sleeps again once traffic
stops for a window, so an idle gateway burns nothing and a busy one never slept anyway. What it
costs is CPU, up to one window per quiet gap: at 1,000 requests a second on one connection, 100 µs
took the gateway from 19% to 27% of a core (``python -m bench.paced``). Off (0) by default, like
HAProxy's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from time import perf_counter


class BusyPoll:
    """One per listening server: ``arm`` on client traffic, and the loop polls until ``window`` passes."""

    __slots__ = ("_clock", "_loop", "_until", "window")

    def __init__(self, window: float, clock: Callable[[], float] = perf_counter) -> None:
        self.window = window  # seconds
        self._clock = clock  # µs resolution needed: the loop's own time is in milliseconds
        self._until = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop it turns, while it does

    @property
    def polling(self) -> bool:
        """Whether a turn is scheduled (the loop does not sleep)."""
        return self._loop is not None

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """Client traffic: poll until ``window`` from now."""
        self._until = self._clock() + self.window
        if self._loop is not loop:  # not turning, or turning a loop that has since closed
            self._loop = loop
            loop.call_soon(self._turn, loop)

    def _turn(self, loop: asyncio.AbstractEventLoop) -> None:
        """One loop turn: schedule the next while the window lasts, else let the loop sleep."""
        if self._loop is not loop:
            return  # a later arm moved to another loop
        if self._clock() < self._until:
            loop.call_soon(self._turn, loop)
        else:
            self._loop = None


def busy_poll(window_us: int) -> BusyPoll | None:
    """Return the poller for ``BUSY_POLL_US`` microseconds, or None when off."""
    return BusyPoll(window_us / 1_000_000) if window_us > 0 else None


__all__ = ["BusyPoll", "busy_poll"]
