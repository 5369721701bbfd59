"""Request hedging: when an instance is slow to answer, ask another one too and take the first head.

An attempt policy of ``proxy/attempts.py``, opt-in per service (``hedging:`` in its options).
Only for idempotent methods whose body is buffered (or absent): the same bytes can go to two
instances and either answer is correct. The race:

* the first attempt is sent; when no response head has arrived after the delay (fixed, or a
  percentile of the service's recent head latency; no hedge before the window has samples), a
  hedge goes to an instance this request has not tried, up to ``max_hedges``;
* each hedge takes a slot of the service's retry budget (released when it ends) and a caps slot;
  when the budget is spent or no other instance is eligible, the request just keeps waiting;
* the first head wins; every other racer is cancelled (the upstream client discards its
  connection) and its slots go back. A racer that fails while another still runs is reported
  to the passive health check and the others keep racing; when all fail, the last failure goes
  to the ordinary retry decision.

``gateway_hedges_total{service,result}`` counts hedges sent and refused,
``gateway_hedge_wins_total{service}`` the requests a hedge answered.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from msa_gateway.errors import UpstreamError
from msa_gateway.health import outlier
from msa_gateway.proxy.retry import FailureKind, failure_from_kind

if TYPE_CHECKING:
    from msa_gateway.health.latency import LatencyWindow
    from msa_gateway.model import HedgingConfig
    from msa_gateway.proxy.attempts import Attempts
    from msa_gateway.proxy.lease import Lease
    from msa_gateway.proxy.upstream import UpstreamResponse

Result = tuple["Lease", "UpstreamResponse | UpstreamError"]


def hedge_delay(config: HedgingConfig, latency: LatencyWindow, now: float) -> float | None:
    """Return how long to wait for a head before hedging, or None for no hedge (too few samples)."""
    if config.delay is not None:
        return config.delay
    assert config.percentile is not None
    seen = latency.percentile(config.percentile, now)
    return None if seen is None else max(config.min_delay, seen)


class Race:
    """The racers of one attempt: started in order, the first head wins."""

    __slots__ = ("at", "order", "racers", "winner")

    def __init__(self, at: Attempts) -> None:
        self.at = at
        self.racers: dict[asyncio.Task[UpstreamResponse], Lease] = {}
        self.order: list[Lease] = []
        self.winner: Lease | None = None

    def start(self, lease: Lease) -> None:
        task = asyncio.ensure_future(self.at.exchange(lease))
        self.racers[task] = lease
        self.order.append(lease)

    async def run(self, first: Lease, config: HedgingConfig) -> Result:
        """Race ``first`` and its hedges; return the winning lease and its head, or the last failure."""
        at = self.at
        delay = hedge_delay(config, at.route.guard.latency, time.monotonic())
        hedges = 0 if delay is not None else config.max_hedges
        self.start(first)
        try:
            while True:
                timeout = delay if hedges < config.max_hedges else None
                done, _ = await asyncio.wait(
                    self.racers, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    hedges += 1
                    lease = at.admit_hedge()
                    if lease is None:
                        hedges = config.max_hedges
                    else:
                        self.start(lease)
                    continue
                result = self._settle(done)
                if result is not None:
                    return result
        finally:
            await self._cancel_losers()

    def _settle(self, done: set[asyncio.Task[UpstreamResponse]]) -> Result | None:
        """Take the finished racers: a head wins; a failure ends the race only when it was the last."""
        failure: Result | None = None
        for task in sorted(done, key=lambda t: self.order.index(self.racers[t])):
            lease = self.racers.pop(task)
            exc = task.exception()
            if exc is None:
                if self.winner is None:
                    self.winner = lease
                    self.at.won(lease)
                    return lease, task.result()
            elif not isinstance(exc, UpstreamError):
                lease.release()
                raise exc
            elif self.racers or failure is not None:
                self._drop_failed(lease, exc)
            else:
                failure = (lease, exc)
        return failure

    def _drop_failed(self, lease: Lease, exc: UpstreamError) -> None:
        """A racer failed while another one still runs: report it and give its slots back."""
        if failure_from_kind(exc.kind, int(exc.request_sent)) is not FailureKind.POOL_OVERFLOW:
            self.at.fw.report(self.at.route, lease, outlier.Outcome.GATEWAY_FAILURE)
        lease.release()

    async def _cancel_losers(self) -> None:
        """Cancel every racer still running; a loser that started before the winner was silent."""
        if not self.racers:
            return
        rank = self.order.index(self.winner) if self.winner is not None else -1
        for task, lease in self.racers.items():
            lease.silent = self.order.index(lease) < rank
            task.cancel()
        await asyncio.gather(*self.racers, return_exceptions=True)
        for task, lease in self.racers.items():
            if not task.cancelled() and task.exception() is None:
                task.result().close()  # it answered in the same tick: discard the connection
            lease.release()
        self.racers.clear()
