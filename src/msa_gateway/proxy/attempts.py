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
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from msa_gateway.errors import HTTPError, NoHealthyInstance, Overloaded, UpstreamError, UpstreamTimeout
from msa_gateway.health import outlier
from msa_gateway.model import Instance
from msa_gateway.observability.otlp import CLIENT, SpanRecord
from msa_gateway.proxy.exchange import Exchange, client_error
from msa_gateway.proxy.headers import is_trusted, upstream_request_headers
from msa_gateway.proxy.retry import NOT_DELIVERED, Decision, FailureKind, failure_from_kind, should_retry
from msa_gateway.proxy.upstream import UpstreamClient, UpstreamResponse

if TYPE_CHECKING:
    from msa_gateway.observability.metrics import Metrics
    from msa_gateway.observability.otlp import Exporter
    from msa_gateway.observability.tracing import Tracer
    from msa_gateway.proxy.request import ProxyRequest
    from msa_gateway.proxy.resilience import ServiceGuard
    from msa_gateway.registry.snapshot import ServiceRoute

log = logging.getLogger("msa_gateway.proxy")

Body = bytes | AsyncIterator[bytes] | None
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Lease:
    """One admitted attempt: the caps slot, the balancer's pick and, for a retry, a budget slot."""

    __slots__ = ("guard", "instance", "key", "released", "retry", "route")

    def __init__(self, route: ServiceRoute, instance: Instance, key: str, retry: bool) -> None:
        self.route = route
        self.guard = route.guard
        self.instance = instance
        self.key = key
        self.retry = retry
        self.released = False

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


class Forwarder:
    """Forwards requests for the proxy: one per runtime, no state of its own per request."""

    __slots__ = ("allow_underscores", "exporter", "metrics", "tracer", "trusted_proxies", "upstream")

    def __init__(
        self,
        upstream: UpstreamClient,
        metrics: Metrics,
        trusted_proxies: tuple[Network, ...],
        *,
        allow_underscores: bool = False,
        tracing: tuple[Tracer | None, Exporter | None] = (None, None),
    ) -> None:
        self.upstream = upstream
        self.metrics = metrics
        self.trusted_proxies = trusted_proxies
        self.allow_underscores = allow_underscores
        self.tracer, self.exporter = tracing

    async def forward(self, route: ServiceRoute, req: ProxyRequest, ex: Exchange, body: Body) -> Outcome:
        """Run the attempts of ``req`` against ``route``'s instances."""
        return await Attempts(self, route, req, ex, body).run()

    def report(self, route: ServiceRoute, lease: Lease, result: outlier.Outcome) -> None:
        """Feed one attempt's result to the passive health check; log an ejection."""
        ejection = route.guard.outlier.report(lease.key, result, time.monotonic())
        if ejection is not None:
            self.metrics.ejections.labels(route.name, lease.instance.address).inc()
            log.warning(
                "instance ejected by passive health check",
                extra={
                    "service": route.name,
                    "instance": lease.key,
                    "seconds": ejection.duration,
                    "consecutive_failures": ejection.consecutive_failures,
                },
            )

    def note_panic(self, route: ServiceRoute, panic: bool) -> None:
        """Record the service's panic state; log and export it when it changes."""
        note_panic(self.metrics, route, panic)


def note_panic(metrics: Metrics, route: ServiceRoute, panic: bool) -> None:
    """Record a service's panic state on its guard; log and export it when it changes."""
    if route.guard.set_panic(panic):
        metrics.panic.labels(route.name).set(1 if panic else 0)
        log.warning(
            "service in panic mode: balancing over all instances" if panic else "service left panic mode",
            extra={"service": route.name},
        )


class Attempts:
    """The attempt loop of one request (one small object per request)."""

    __slots__ = (
        "body",
        "deadline",
        "ex",
        "fw",
        "n",
        "req",
        "retry_reason",
        "retry_slot",
        "route",
        "span_id",
        "tried",
    )

    def __init__(
        self, fw: Forwarder, route: ServiceRoute, req: ProxyRequest, ex: Exchange, body: Body
    ) -> None:
        self.fw, self.route, self.req, self.ex, self.body = fw, route, req, ex, body
        total = route.spec.options.timeouts.total
        self.deadline = None if total is None else time.monotonic() + total
        self.tried: list[str] = []
        self.n = 0
        self.retry_slot = False  # the next attempt is a retry holding a slot of the budget
        self.span_id = b""  # the current attempt's span, when the request is traced
        self.retry_reason: str | None = None  # why the last failed attempt is tried again

    async def run(self) -> Outcome:
        """Try instances until one answers or a rule says stop."""
        guard = self.route.guard
        guard.budget.start_request()
        outcome: Outcome | None = None
        try:
            while outcome is None:
                self.n += 1
                outcome = await self._attempt(self._admit())
        except HTTPError as exc:
            outcome = Outcome(guard, self.n, error=exc)
        finally:
            if outcome is None:  # cancelled, or the client went away: nobody will call finish()
                guard.budget.end_request()
        return outcome

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
        self.fw.note_panic(route, panic)
        if not candidates:
            raise NoHealthyInstance(f"no healthy instance of {route.name!r}")
        pick_for = getattr(route.balancer, "pick_for", None)  # a balancer reading the request
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

    async def _attempt(self, lease: Lease) -> Outcome | None:
        """Return the outcome, or None to try again."""
        trace = self.req.trace
        start_ns = time.time_ns() if trace is not None and trace.sampled and self.fw.exporter else 0
        observe = getattr(self.route.balancer, "observe", None)  # a latency-aware balancer
        sent = time.monotonic() if observe is not None else 0.0
        try:
            resp = await self._send(lease.instance)
        except UpstreamError as exc:
            if observe is not None:
                observe(lease.instance, time.monotonic() - sent)
            lease.release()
            retry = self._retry_error(lease, exc)
            if start_ns:
                self._span(lease, start_ns, None, exc.kind, retry)
            if retry:
                return None
            raise
        except BaseException:
            lease.release()
            raise
        if observe is not None:
            observe(lease.instance, time.monotonic() - sent)
        retry = self._retry_status(lease, resp.status)
        if start_ns:
            self._span(lease, start_ns, resp.status, None, retry)
        if retry:
            lease.release()
            resp.close()
            return None
        return Outcome(self.route.guard, self.n, resp, lease)

    def upstream_headers(self, instance: Instance) -> list[tuple[bytes, bytes]]:
        """Return the request's headers for ``instance`` (also a WebSocket upgrade's)."""
        req, fw = self.req, self.fw
        route = self.route
        options = route.spec.options
        return upstream_request_headers(
            req.headers,
            peer=req.peer,
            scheme=req.scope.get("scheme", "http"),
            prefix=route.prefix,
            request_id=req.request_id,
            upstream_host=instance.address,
            trusted=is_trusted(req.peer, fw.trusted_proxies),
            pass_host_header=options.pass_host_header,
            content_length=req.body_length if req.has_body else None,
            allow_underscores=fw.allow_underscores,
        )

    async def _send(self, instance: Instance) -> UpstreamResponse:
        req, fw = self.req, self.fw
        options = self.route.spec.options
        headers = self.upstream_headers(instance)
        self._trace_headers(headers)
        sending = fw.upstream.send(
            instance, options, req.method, req.target, headers, self.body, req.body_length
        )
        left = None if self.deadline is None else self.deadline - time.monotonic()
        timeout = options.retry.attempt_timeout(left)
        if timeout is None:
            return await sending
        per_try = options.retry.per_try_timeout
        kind = "per_try_timeout" if per_try is not None and (left is None or per_try < left) else "deadline"
        if timeout <= 0:
            sending.close()
            raise UpstreamTimeout("the request's deadline passed", "deadline")
        try:
            async with asyncio.timeout(timeout):
                return await sending
        except TimeoutError:
            detail = (
                "the attempt ran out of time"
                if kind == "per_try_timeout"
                else "the request's deadline passed"
            )
            raise UpstreamTimeout(detail, kind) from None

    def _trace_headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Send a child ``traceparent`` for this attempt (the client's, untouched, with TRACING=off)."""
        req = self.req
        trace = req.trace
        if trace is None:
            if req.traceparent is not None:
                headers.append((b"traceparent", req.traceparent))
            if req.tracestate is not None:
                headers.append((b"tracestate", req.tracestate))
            return
        tracer = self.fw.tracer
        assert tracer is not None
        self.span_id = tracer.span_id()
        headers.append((b"traceparent", trace.child(self.span_id)))
        if trace.tracestate is not None:
            headers.append((b"tracestate", trace.tracestate))

    def _span(
        self, lease: Lease, start_ns: int, status: int | None, error: str | None, retried: bool
    ) -> None:
        """Export this attempt as a client span, a child of the request's server span."""
        trace, exporter = self.req.trace, self.fw.exporter
        assert trace is not None and exporter is not None
        attributes: dict[str, str | int] = {
            "http.request.method": self.req.method,
            "server.address": lease.instance.host,
            "server.port": lease.instance.port,
            "msa.service": self.route.name,
            "msa.attempt": self.n,
        }
        if status is not None:
            attributes["http.response.status_code"] = status
        if error is not None:
            attributes["error.type"] = error
        if retried:
            attributes["msa.retry_reason"] = self.retry_reason or ""
        elif self.ex.retry_refused is not None:
            attributes["msa.retry_refused"] = self.ex.retry_refused
        exporter.submit(
            SpanRecord(
                trace.trace_id,
                self.span_id,
                trace.span_id,
                self.req.method,
                CLIENT,
                start_ns,
                time.time_ns(),
                attributes,
                error is not None or (status is not None and status >= 500),
            )
        )

    @property
    def _buffered(self) -> bool:
        return not isinstance(self.body, AsyncIterator)

    def _retry_error(self, lease: Lease, exc: UpstreamError) -> bool:
        ex = self.ex
        if ex.client_gone:
            raise UpstreamError("client went away", "client_gone") from None
        side = client_error(ex, self.route.spec.options.max_body_size)
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
        if decision.retry:
            self.retry_slot = not free
            self.route.upstream_errors.labels(self.route.name, exc.kind).inc()
        return decision.retry

    def _retry_status(self, lease: Lease, status: int) -> bool:
        self.fw.report(self.route, lease, outlier.outcome_for_status(status))
        policy = self.route.spec.options.retry
        if not policy.retry_on_status or status not in policy.retry_on_status:
            return False
        decision = self._decide(FailureKind.STATUS, status, True, self._buffered, charged=True)
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
            policy=self.route.spec.options.retry,
            budget=self.route.guard.budget if charged else None,
        )
        if decision.retry:
            self.retry_reason = decision.reason
            self.fw.metrics.retries.labels(self.route.name, decision.reason).inc()
        else:  # only a refused retry pays for this counter, never a request that succeeded
            self.ex.retry_refused = decision.reason
            self.fw.metrics.retries_refused.labels(self.route.name, decision.reason).inc()
        return decision
