"""The proxy as a raw ASGI app: route -> pick -> forward (with safe retries) -> stream back.

This is the hot path. It reads the registry snapshot once, routes on the raw path, picks an
instance among those that pass active health checks and are not ejected by the passive ones,
streams the request body up and the response body down chunk by chunk (``proxy/exchange.py``;
never a whole body in memory, except a small one: up to 64 KiB, or up to the retry buffer limit
when the service may retry it), and ends with one access line and the request metrics. Errors
become JSON only through ``errors.render``.

A failed attempt is tried again on another instance only when ``retry.should_retry`` says so:
nothing reached the instance, or the method is idempotent and the service opted in; never once a
response byte went to the client; bounded by count, deadline and budget.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from msa_gateway.errors import (
    BadRequest,
    HTTPError,
    NoHealthyInstance,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ServiceNotFound,
    UpstreamError,
    UpstreamTimeout,
    render,
)
from msa_gateway.health.outlier import Outcome, outcome_for_status
from msa_gateway.observability.metrics import UNKNOWN_SERVICE, method_label
from msa_gateway.proxy.exchange import (
    STATUS_CLIENT_GONE,
    ClientGone,
    Exchange,
    read_all,
    read_body,
    stream_back,
)
from msa_gateway.proxy.headers import (
    is_trusted,
    request_id_from,
    upstream_request_headers,
)
from msa_gateway.proxy.paths import check_segments, split_service, upstream_target
from msa_gateway.proxy.redirects import Redirects
from msa_gateway.proxy.retry import (
    IDEMPOTENT_METHODS,
    NOT_DELIVERED,
    FailureKind,
    failure_from_kind,
    should_retry,
)
from msa_gateway.registry.snapshot import ServiceRoute

if TYPE_CHECKING:
    from msa_gateway.runtime import Runtime

Scope = dict[str, Any]
Message = dict[str, Any]
log = logging.getLogger("msa_gateway.proxy")

SMALL_BODY = 64 * 1024  # bodies up to this size (with a Content-Length) are read whole before sending


class ProxyApp:
    """Forward ``/{service}/{path}`` to a healthy instance of ``service``."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        """Serve one HTTP request (websocket upgrades are refused: not supported yet)."""
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1003})
            return
        rt = self.rt
        started = time.perf_counter()
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        rid_raw = None
        content_length: int | None = None
        chunked = False
        for hname, hvalue in headers:
            if hname == b"x-request-id":
                rid_raw = hvalue
            elif hname == b"content-length":
                content_length = int(hvalue) if hvalue.isdigit() else -1
            elif hname == b"transfer-encoding":
                chunked = True
        request_id = request_id_from(rid_raw)
        method: str = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        snapshot = rt.snapshot
        ex = Exchange()
        route: ServiceRoute | None = None
        error: str | None = None
        client = scope.get("client")
        peer = client[0] if client else None
        stats = rt.metrics.requests
        stats.in_flight += 1
        try:
            name, rest = split_service(raw_path)
            route = snapshot.services.get(name)
            if route is None:
                raise ServiceNotFound(
                    f"no service is registered under {name!r}" if name else "no service in path"
                )
            check_segments(rest)
            if content_length is not None and content_length < 0:
                raise BadRequest("invalid Content-Length")
            if chunked:
                content_length = None
            limit = route.spec.options.max_body_size
            if limit is not None and content_length is not None and content_length > limit:
                raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
            await self._forward(
                scope,
                receive,
                send,
                ex,
                route,
                rest,
                request_id,
                peer,
                content_length,
                chunked or bool(content_length),
            )
        except ClientGone:
            if ex.too_slow:
                await self._error(send, ex, RequestTimeout("the request body stopped arriving"), request_id)
                error = "request_timeout"
            elif ex.too_large and route is not None:
                limit = route.spec.options.max_body_size
                await self._error(
                    send, ex, PayloadTooLarge(f"the request body is larger than {limit} bytes"), request_id
                )
                error = "payload_too_large"
            else:
                ex.status, error = STATUS_CLIENT_GONE, "client_gone"
        except HTTPError as exc:
            if isinstance(exc, UpstreamError) and route is not None:
                route.upstream_errors.labels(route.name, exc.kind).inc()
                error = exc.kind
            else:
                error = exc.error
            if ex.client_gone:
                ex.status = STATUS_CLIENT_GONE
            elif not ex.started_response:
                await self._error(send, ex, exc, request_id)
        finally:
            stats.in_flight -= 1
            mlabel = method_label(method)
            if route is not None:
                route.count(mlabel, ex.status)
                route.duration.observe(time.perf_counter() - started)
            else:
                rt.count_unknown(mlabel, ex.status)
            rt.access.log(
                method=method,
                path=raw_path.decode("latin-1"),
                status=ex.status,
                started=started,
                request_id=request_id,
                service=route.name if route is not None else UNKNOWN_SERVICE,
                instance=ex.instance,
                nbytes=ex.nbytes,
                client=peer or "-",
                error=error or ex.error,
                retry_refused=ex.retry_refused,
            )

    @staticmethod
    async def _error(send: Any, ex: Exchange, exc: HTTPError, request_id: str) -> None:
        status, hdrs, body = render(exc, request_id)
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})
        ex.status, ex.nbytes = status, len(body)

    async def _forward(
        self,
        scope: Scope,
        receive: Any,
        send: Any,
        ex: Exchange,
        route: ServiceRoute,
        rest: bytes,
        request_id: str,
        peer: str | None,
        content_length: int | None,
        has_body: bool,
    ) -> None:
        rt = self.rt
        options = route.spec.options
        policy = options.retry
        guard = route.guard
        method: str = scope["method"]
        target = upstream_target(rest, scope["query_string"])
        trusted = is_trusted(peer, rt.config.trusted_proxies)
        total = options.timeouts.total
        deadline = time.monotonic() + total if total is not None else None
        # A small body is read whole first (it then leaves with the head in one write); a larger one
        # is kept in memory only when a retry after sending could happen, else it streams through.
        replay: bytes | None = None
        if has_body and (
            (content_length is not None and content_length <= SMALL_BODY)
            or (policy.max_retries and method in IDEMPOTENT_METHODS and policy.can_buffer(content_length))
        ):
            replay = await read_all(receive, ex, options.max_body_size, rt.settings.body_timeout)
        stream_body: AsyncIterator[bytes] | None = None
        if has_body and replay is None:
            stream_body = read_body(receive, ex, options.max_body_size, rt.settings.body_timeout)
        tried: list[str] = []
        attempt = 0
        holding_retry = panic = False
        budget = guard.budget
        budget.start_request()
        try:
            while True:
                attempt += 1
                this_is_retry, holding_retry = holding_retry, False
                candidates, panic = guard.candidates(
                    route.instances, route.keys, route.eligible, route.eligible_keys, tried
                )
                if not candidates:
                    if this_is_retry:
                        budget.release_retry()
                    raise NoHealthyInstance(f"no healthy instance of {route.name!r}")
                instance = route.balancer.pick(candidates)
                key = route.key_for[id(instance)]
                ex.instance = instance.address
                tried.append(key)
                acquired = guard.limits.try_acquire(key)
                try:
                    if not acquired:
                        rt.metrics.overflow.labels(route.name).inc()
                        if guard.limits.last_overflow == "service" or len(tried) >= len(route.instances):
                            raise Overloaded(f"too many requests in flight for {route.name!r}")
                        raise UpstreamError("instance at capacity", "overflow", request_sent=False)
                    up_headers = upstream_request_headers(
                        scope["headers"],
                        peer=peer,
                        scheme=scope.get("scheme", "http"),
                        prefix=route.prefix,
                        request_id=request_id,
                        upstream_host=instance.address,
                        trusted=trusted,
                        pass_host_header=options.pass_host_header,
                        content_length=content_length if has_body else None,
                        allow_underscores=rt.settings.allow_underscores_in_headers,
                    )
                    body: bytes | AsyncIterator[bytes] | None = replay if replay is not None else stream_body
                    try:
                        if deadline is None:
                            resp = await rt.upstream.send(
                                instance, options, method, target, up_headers, body, content_length
                            )
                        else:
                            left = deadline - time.monotonic()
                            if left <= 0:
                                raise UpstreamTimeout("the request's deadline passed", "deadline")
                            try:
                                async with asyncio.timeout(left):
                                    resp = await rt.upstream.send(
                                        instance, options, method, target, up_headers, body, content_length
                                    )
                            except TimeoutError:
                                raise UpstreamTimeout("the request's deadline passed", "deadline") from None
                    except UpstreamError as exc:
                        if ex.client_gone:
                            raise UpstreamError("client went away", "client_gone") from None
                        if ex.too_large:
                            raise PayloadTooLarge("the request body is larger than the limit") from None
                        if ex.too_slow:
                            raise RequestTimeout("the request body stopped arriving") from None
                        if exc.kind == "deadline":
                            raise
                        failure = failure_from_kind(exc.kind, int(exc.request_sent))
                        if failure is not FailureKind.POOL_OVERFLOW:
                            self._report(route, key, instance.address, Outcome.GATEWAY_FAILURE)
                        replayable = replay is not None or not has_body or not ex.body_started
                        # Retrying an attempt that reached nobody adds no load: not charged to the budget.
                        free = failure in NOT_DELIVERED and not exc.request_sent
                        decision = should_retry(
                            method,
                            failure,
                            status=None,
                            request_bytes_sent=int(exc.request_sent),
                            response_bytes_sent_to_client=0,
                            body_replayable=replayable,
                            attempt=attempt,
                            deadline_left=None if deadline is None else deadline - time.monotonic(),
                            policy=policy,
                            budget=None if free else budget,
                        )
                        if decision.retry:
                            holding_retry = not free
                            rt.metrics.retries.labels(route.name, decision.reason).inc()
                            route.upstream_errors.labels(route.name, exc.kind).inc()
                            continue
                        ex.retry_refused = decision.reason
                        raise
                    status = resp.status
                    if policy.retry_on_status and status in policy.retry_on_status:
                        self._report(route, key, instance.address, outcome_for_status(status))
                        decision = should_retry(
                            method,
                            FailureKind.STATUS,
                            status=status,
                            request_bytes_sent=1,
                            response_bytes_sent_to_client=0,
                            body_replayable=replay is not None or not has_body,
                            attempt=attempt,
                            deadline_left=None if deadline is None else deadline - time.monotonic(),
                            policy=policy,
                            budget=budget,
                        )
                        if decision.retry:
                            holding_retry = True
                            rt.metrics.retries.labels(route.name, decision.reason).inc()
                            resp.close()
                            continue
                    else:
                        self._report(route, key, instance.address, outcome_for_status(status))
                    try:
                        redirects = None
                        if rt.settings.rewrite_redirects:
                            scheme = scope.get("scheme", "http")
                            redirects = Redirects(instance, scope["headers"], scheme, route.prefix, trusted)
                        await stream_back(receive, send, ex, resp, request_id, redirects)
                    finally:
                        resp.release()
                    return
                finally:
                    if acquired:
                        guard.limits.release(key)
                    route.balancer.done(instance)
                    if this_is_retry:
                        budget.release_retry()
        finally:
            if holding_retry:
                budget.release_retry()
            budget.end_request()
            if panic is not route.in_panic:
                route.in_panic = panic
                rt.metrics.panic.labels(route.name).set(1 if panic else 0)
                log.warning(
                    "service in panic mode: balancing over all instances"
                    if panic
                    else "service left panic mode",
                    extra={"service": route.name},
                )

    def _report(self, route: ServiceRoute, key: str, address: str, outcome: Outcome) -> None:
        ejection = route.guard.outlier.report(key, outcome, time.monotonic())
        if ejection is not None:
            self.rt.metrics.ejections.labels(route.name, address).inc()
            log.warning(
                "instance ejected by passive health check",
                extra={
                    "service": route.name,
                    "instance": key,
                    "seconds": ejection.duration,
                    "consecutive_failures": ejection.consecutive_failures,
                },
            )
