"""The attempts of one request: pick an instance, admit it under the caps, send, decide on a retry.

``Forwarder.forward`` runs them and returns an ``Outcome``: the response head of the attempt
that is answered to the client (its caps slot and balancer pick still held while the body
streams back; ``Outcome.finish`` gives them back), or the error to answer. Every attempt's
result feeds the passive health check.

A failed attempt is tried again on another instance only when ``retry.should_retry`` says so:
nothing reached the instance, or the method is idempotent and the service opted in; never once
a response byte went to the client; bounded by count, deadline and budget. An instance at its
concurrency cap is skipped for another one (no attempt is spent); when every candidate is full,
or the service's own cap is, the answer is 503 with the service's ``limits.retry_after``.

With ``hedging`` (idempotent methods, buffered bodies) an attempt is a race (``hedging.py``).
With hedging or latency ejection on, every attempt's wait for its head is tracked on the guard
(``health/latency.py``); with neither, nothing is timed. A traced request sends each attempt a
child ``traceparent``; when it is sampled and spans are exported, each exchange is a client span
(submitted when the exchange ends; the retry decision is noted on it right after).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from msa_gateway.errors import HTTPError, NoHealthyInstance, Overloaded, UpstreamError, UpstreamTimeout
from msa_gateway.health import outlier
from msa_gateway.health.latency import Wait
from msa_gateway.model import HedgingConfig, Instance
from msa_gateway.observability.otlp import CLIENT, SpanRecord
from msa_gateway.proxy.exchange import Exchange, client_error
from msa_gateway.proxy.headers import upstream_request_headers
from msa_gateway.proxy.hedging import Race
from msa_gateway.proxy.lease import Lease, Outcome, note_decision
from msa_gateway.proxy.retry import (
    IDEMPOTENT_METHODS,
    NOT_DELIVERED,
    Decision,
    FailureKind,
    failure_from_kind,
    should_retry,
)
from msa_gateway.proxy.trust import is_trusted
from msa_gateway.proxy.upstream import UpstreamResponse

if TYPE_CHECKING:
    from msa_gateway.observability.tracing import Trace
    from msa_gateway.proxy.forwarder import Forwarder
    from msa_gateway.proxy.request import ProxyRequest
    from msa_gateway.registry.snapshot import ServiceRoute

log = logging.getLogger("msa_gateway.proxy")

Body = bytes | AsyncIterator[bytes] | None


class Attempts:
    """The attempt loop of one request (one small object per request)."""

    __slots__ = (
        "body",
        "deadline",
        "ex",
        "first_child",
        "fw",
        "hedging",
        "n",
        "observe",
        "req",
        "retry_slot",
        "route",
        "timed",
        "tried",
    )

    def __init__(
        self, fw: Forwarder, route: ServiceRoute, req: ProxyRequest, ex: Exchange, body: Body
    ) -> None:
        self.fw, self.route, self.req, self.ex, self.body = fw, route, req, ex, body
        total = route.options.timeouts.total
        self.deadline = None if total is None else time.monotonic() + total
        self.tried: list[str] = []
        self.n = 0
        self.first_child = True  # the next upstream attempt is the first: its span id came with the trace
        self.retry_slot = False  # the next attempt is a retry holding a slot of the budget
        hedging = route.options.hedging
        self.hedging: HedgingConfig | None = (
            hedging if hedging is not None and req.method in IDEMPOTENT_METHODS and self._buffered else None
        )
        self.timed = hedging is not None or route.guard.waits.enabled
        # a latency-aware balancer (p2c_ewma) learns from every exchange; None for the others
        self.observe: Callable[[Instance, float], None] | None = route.observe

    async def run(self) -> Outcome:
        """Try instances until one answers or a rule says stop (one coroutine for every attempt)."""
        guard = self.route.guard
        guard.budget.start_request()
        result: UpstreamResponse | UpstreamError
        try:
            while True:
                self.n += 1
                lease = self._admit()
                if self.hedging is not None:
                    lease, result = await Race(self).run(lease, self.hedging)
                else:
                    try:
                        result = await self.exchange(lease)
                    except UpstreamError as exc:
                        result = exc
                    except BaseException:
                        lease.release()
                        raise
                outcome = self._judge(lease, result)
                if outcome is not None:
                    return outcome
        except HTTPError as exc:
            return Outcome(guard, self.n, error=exc)
        except BaseException:  # cancelled, or the client went away: nobody will call finish()
            guard.budget.end_request()
            raise

    def admit(self) -> Lease:
        """Pick an instance and take its caps slot, alone (a WebSocket handshake: proxy/websocket.py)."""
        return self._admit()

    def _admit(self) -> Lease:
        is_retry, self.retry_slot = self.retry_slot, False
        try:
            instance, key = self._pick()
        except HTTPError:
            if is_retry:
                self.route.guard.budget.release_retry()
            raise
        self.ex.instance = instance.address
        self.tried.append(key)
        return Lease(self.route, instance, key, is_retry)

    def _pick(self) -> tuple[Instance, str]:
        route = self.route
        guard = route.guard
        candidates, panic = guard.candidates(
            route.instances, route.keys, route.eligible, route.eligible_keys, self.tried
        )
        if guard.set_panic(panic):  # forwarder.note_panic, without its call when nothing changed
            self.fw.panic_changed(route, panic)
        if guard.newly_slow:
            self.fw.note_slow(route, guard.newly_slow)
        if not candidates:
            raise NoHealthyInstance(f"no healthy instance of {route.name!r}")
        pick_for = route.pick_for  # a balancer reading the request
        while True:
            instance = route.balancer.pick(candidates) if pick_for is None else pick_for(candidates, self.req)
            key = route.key_for[id(instance)]
            if guard.limits.try_acquire(key):
                return instance, key
            route.balancer.done(instance)
            self.fw.metrics.overflow.labels(route.name).inc()
            candidates = [c for c in candidates if c is not instance]
            if guard.limits.last_overflow == "service" or not candidates:
                retry_after = guard.options.limits.retry_after
                raise Overloaded(f"too many requests in flight for {route.name!r}", retry_after)

    def admit_hedge(self) -> Lease | None:
        """Admit a hedge on an instance this request has not tried, under the retry budget; or None."""
        route = self.route
        budget = route.guard.budget
        hedges = self.fw.metrics.hedges
        if not budget.try_acquire_retry():
            hedges.labels(route.name, "budget_exhausted").inc()
            return None
        try:
            instance, key = self._pick()
        except HTTPError:
            instance, key = None, ""
        if instance is None or key in self.tried:
            if instance is not None:
                route.guard.limits.release(key)
                route.balancer.done(instance)
            budget.release_retry()
            hedges.labels(route.name, "no_other_instance").inc()
            return None
        self.tried.append(key)
        hedges.labels(route.name, "sent").inc()
        return Lease(route, instance, key, True)

    def won(self, lease: Lease) -> None:
        """``lease`` answered first in a hedged race."""
        self.ex.instance = lease.instance.address
        if lease.retry:
            self.fw.metrics.hedge_wins.labels(self.route.name).inc()

    def exchange(self, lease: Lease) -> Coroutine[Any, Any, UpstreamResponse]:
        """Send to the lease's instance and wait for the head (traced and timed when anything reads it).

        The layers below are plain calls that hand back the one coroutine doing the work, so an
        untimed, untraced attempt is a single coroutine (each nested one costs every resumption).
        """
        if self.observe is None and not self.timed and self.fw.exporter is None:
            return self._send(lease.instance)  # nothing reads the attempt: no layer around it
        if self.observe is not None:
            return self._observed(lease, self.observe)
        return self._exchange(lease)

    async def _observed(self, lease: Lease, observe: Callable[[Instance, float], None]) -> UpstreamResponse:
        sent = time.monotonic()
        try:
            resp = await self._exchange(lease)
        except UpstreamError:
            observe(lease.instance, time.monotonic() - sent)
            raise
        observe(lease.instance, time.monotonic() - sent)
        return resp

    def _exchange(self, lease: Lease) -> Coroutine[Any, Any, UpstreamResponse]:
        if self.fw.exporter is not None and self.req.trace is not None and self.req.trace.sampled:
            return self._traced(lease)
        return self._timed(lease, None)

    def _timed(self, lease: Lease, span_id: bytes | None) -> Coroutine[Any, Any, UpstreamResponse]:
        if not self.timed:
            return self._send(lease.instance, span_id)
        return self._waited(lease, span_id)

    async def _waited(self, lease: Lease, span_id: bytes | None) -> UpstreamResponse:
        guard = self.route.guard
        started = time.monotonic()
        guard.waits.started(lease.key, started)
        how = Wait.DROPPED
        try:
            resp = await self._send(lease.instance, span_id)
            how = Wait.ANSWERED
            return resp
        except UpstreamTimeout:
            how = Wait.SILENT
            raise
        except asyncio.CancelledError:
            how = Wait.SILENT if lease.silent else Wait.DROPPED
            raise
        finally:
            now = time.monotonic()
            guard.waits.ended(lease.key, now, how)
            if how is Wait.ANSWERED:
                guard.latency.add(now - started)

    async def _traced(self, lease: Lease) -> UpstreamResponse:
        trace = self.req.trace
        assert trace is not None
        span_id = self._child_id(trace)
        start_ns = time.time_ns()
        status: int | None = None
        error: str | None = None
        try:
            resp = await self._timed(lease, span_id)
            status = resp.status
            return resp
        except UpstreamError as exc:
            error = exc.kind
            raise
        except asyncio.CancelledError:
            error = "cancelled"
            raise
        finally:
            lease.span = self._span(lease, span_id, start_ns, status, error)

    def _judge(self, lease: Lease, result: UpstreamResponse | UpstreamError) -> Outcome | None:
        """Return the outcome of one attempt's result, or None to try again."""
        if isinstance(result, UpstreamError):
            lease.release()
            if self._retry_error(lease, result):
                return None
            raise result
        if self._retry_status(lease, result.status):
            lease.release()
            result.close()
            return None
        return Outcome(self.route.guard, self.n, result, lease)

    def upstream_headers(self, instance: Instance) -> list[tuple[bytes, bytes]]:
        """Return the request's headers for ``instance`` (also a WebSocket upgrade's)."""
        req, route = self.req, self.route
        options = route.options
        headers = upstream_request_headers(
            req.headers,
            peer=req.peer,
            scheme=req.scope.get("scheme", "http"),
            prefix=route.prefix,
            request_id=req.request_id,
            upstream_host=instance.address,
            trusted=bool(req.trusted) and is_trusted(req.peer, req.trusted),  # none trusted: no call
            pass_host_header=options.pass_host_header,
            content_length=req.body_length if req.has_body else None,
            allow_underscores=self.fw.allow_underscores,
        )
        if req.extra_headers:
            headers.extend(req.extra_headers)
        return headers

    def _send(
        self, instance: Instance, span_id: bytes | None = None
    ) -> Coroutine[Any, Any, UpstreamResponse]:
        req = self.req
        options = self.route.options
        headers = self.upstream_headers(instance)
        self.trace_headers(headers, span_id)
        sending = self.fw.upstream.send(
            instance, options, req.method, req.target, headers, self.body, req.body_length
        )
        retry = options.retry
        per_try = retry.per_try_timeout
        if self.deadline is None and per_try is None:  # unbounded: no interpreted call (model.py)
            return sending
        left = None if self.deadline is None else self.deadline - time.monotonic()
        timeout = retry.attempt_timeout(left)
        assert timeout is not None  # bounded by the deadline or the per-try timeout, as just checked
        kind = "per_try_timeout" if per_try is not None and (left is None or per_try < left) else "deadline"
        return _within(sending, timeout, kind)

    def trace_headers(self, headers: list[tuple[bytes, bytes]], span_id: bytes | None) -> None:
        """Send a child ``traceparent`` for this attempt (the client's, untouched, with TRACING=off)."""
        req = self.req
        trace = req.trace
        if trace is None:
            if req.traceparent is not None:
                headers.append((b"traceparent", req.traceparent))
            if req.tracestate is not None:
                headers.append((b"tracestate", req.tracestate))
            return
        if span_id is not None:
            headers.append((b"traceparent", trace.child(span_id)))
        elif self.first_child and trace.first is not None:  # made with the trace, in its batch
            self.first_child = False
            headers.append((b"traceparent", trace.first))
        else:
            headers.append((b"traceparent", trace.child(self._child_id(trace))))
        if trace.tracestate is not None:
            headers.append((b"tracestate", trace.tracestate))

    def _child_id(self, trace: Trace) -> bytes:
        """Return the span id of this request's next upstream attempt (the one drawn with its trace first)."""
        if self.first_child:
            self.first_child = False
            return trace.spare
        tracer = self.fw.tracer
        assert tracer is not None
        return tracer.span_id()

    def _span(
        self, lease: Lease, span_id: bytes, start_ns: int, status: int | None, error: str | None
    ) -> SpanRecord:
        """Export one exchange as a client span, a child of the request's server span."""
        trace, exporter = self.req.trace, self.fw.exporter
        assert trace is not None and exporter is not None
        attributes: dict[str, str | int] = {
            "http.request.method": self.req.method,
            "server.address": lease.instance.host,
            "server.port": lease.instance.port,
            "msa.service": self.route.name,
            "msa.attempt": self.n,
        }
        if lease.retry:
            attributes["msa.hedge_or_retry"] = 1
        if status is not None:
            attributes["http.response.status_code"] = status
        if error is not None:
            attributes["error.type"] = error
        span = SpanRecord(
            trace.trace_id,
            span_id,
            trace.span_id,
            self.req.method,
            CLIENT,
            start_ns,
            time.time_ns(),
            attributes,
            error is not None or (status is not None and status >= 500),
        )
        exporter.submit(span)
        return span

    @property
    def _buffered(self) -> bool:
        return not isinstance(self.body, AsyncIterator)

    def _retry_error(self, lease: Lease, exc: UpstreamError) -> bool:
        ex = self.ex
        if ex.client_gone:
            raise UpstreamError("client went away", "client_gone") from None
        side = client_error(ex, self.route.options.max_body_size)
        if side is not None:
            raise side from None
        if exc.kind == "deadline":
            return False
        failure = failure_from_kind(exc.kind, int(exc.request_sent))
        if failure is not FailureKind.POOL_OVERFLOW:
            self.fw.report(self.route, lease, outlier.Outcome.GATEWAY_FAILURE)
        # Retrying an attempt that reached nobody adds no load: not charged to the budget.
        free = failure in NOT_DELIVERED and not exc.request_sent
        replayable = self._buffered or not ex.body_started
        decision = self._decide(failure, None, exc.request_sent, replayable, charged=not free)
        note_decision(lease, decision)
        if decision.retry:
            self.retry_slot = not free
            self.route.upstream_errors.labels(self.route.name, exc.kind).inc()
        return decision.retry

    def _retry_status(self, lease: Lease, status: int) -> bool:
        if status < 500:  # outlier.outcome_for_status would say SUCCESS: no object, no clock
            self.route.guard.outlier.succeeded(lease.key)
        else:
            self.fw.report(self.route, lease, outlier.outcome_for_status(status))
        policy = self.route.options.retry
        if not policy.retry_on_status or status not in policy.retry_on_status:
            return False
        decision = self._decide(FailureKind.STATUS, status, True, self._buffered, charged=True)
        note_decision(lease, decision)
        self.retry_slot = decision.retry
        return decision.retry

    def _decide(
        self, failure: FailureKind, status: int | None, sent: bool, replayable: bool, *, charged: bool
    ) -> Decision:
        left = None if self.deadline is None else self.deadline - time.monotonic()
        decision = should_retry(
            self.req.method,
            failure,
            status=status,
            request_bytes_sent=int(sent),
            response_bytes_sent_to_client=0,
            body_replayable=replayable,
            attempt=self.n,
            deadline_left=left,
            policy=self.route.options.retry,
            budget=self.route.guard.budget if charged else None,
        )
        if decision.retry:
            self.fw.metrics.retries.labels(self.route.name, decision.reason).inc()
        else:  # only a refused retry pays for this counter, never a request that succeeded
            self.ex.retry_refused = decision.reason
            self.fw.metrics.retries_refused.labels(self.route.name, decision.reason).inc()
        return decision


async def _within(
    sending: Coroutine[Any, Any, UpstreamResponse], timeout: float, kind: str
) -> UpstreamResponse:
    """Await ``sending`` for at most ``timeout`` seconds (``kind`` names the limit that set it)."""
    if timeout <= 0:
        sending.close()
        raise UpstreamTimeout("the request's deadline passed", "deadline")
    try:
        async with asyncio.timeout(timeout):
            return await sending
    except TimeoutError:
        detail = (
            "the attempt ran out of time" if kind == "per_try_timeout" else "the request's deadline passed"
        )
        raise UpstreamTimeout(detail, kind) from None
