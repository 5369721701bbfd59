"""What one request holds while it runs: a ``Lease`` per admitted attempt and the ``Outcome`` of them all.

A lease is the caps slot, the balancer's pick and (for a retry or a hedge) a retry-budget slot;
it is given back exactly once. The outcome carries the response to stream back with its lease
still held until the body is through, or the error to answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from msa_gateway.errors import HTTPError
from msa_gateway.model import Instance
from msa_gateway.proxy.retry import Decision
from msa_gateway.proxy.upstream import UpstreamResponse

if TYPE_CHECKING:
    from msa_gateway.observability.otlp import SpanRecord
    from msa_gateway.proxy.resilience import ServiceGuard
    from msa_gateway.registry.snapshot import ServiceRoute


class Lease:
    """One admitted attempt: the caps slot, the balancer's pick and, for a retry or hedge, a budget slot."""

    __slots__ = ("guard", "instance", "key", "released", "retry", "route", "silent", "span")

    def __init__(self, route: ServiceRoute, instance: Instance, key: str, retry: bool) -> None:
        self.route = route
        self.guard = route.guard
        self.instance = instance
        self.key = key
        self.retry = retry
        self.released = False
        self.silent = False  # cancelled as a hedge loser that had waited longer than the winner
        self.span: SpanRecord | None = None  # this exchange's client span, when it is exported

    def release(self) -> None:
        """Give everything back once (later calls do nothing)."""
        if not self.released:
            self.released = True
            self.guard.limits.release(self.key)
            self.route.balancer.done(self.instance)
            if self.retry:
                self.guard.budget.release_retry()


class Outcome:
    """How the attempts ended: a response to stream back, or an error to answer."""

    __slots__ = ("attempts", "error", "guard", "lease", "response")

    def __init__(
        self,
        guard: ServiceGuard,
        attempts: int,
        response: UpstreamResponse | None = None,
        lease: Lease | None = None,
        error: HTTPError | None = None,
    ) -> None:
        self.guard = guard
        self.attempts = attempts
        self.response = response
        self.lease = lease
        self.error = error

    def finish(self) -> None:
        """The exchange is over: give the connection, the caps slot and the budget share back."""
        if self.response is not None:
            self.response.release()
        if self.lease is not None:
            self.lease.release()
        self.guard.budget.end_request()


def note_decision(lease: Lease, decision: Decision) -> None:
    """Put a retry decision on the exchange's span (exported spans only)."""
    if lease.span is not None:
        key = "msa.retry_reason" if decision.retry else "msa.retry_refused"
        lease.span.attributes[key] = decision.reason
