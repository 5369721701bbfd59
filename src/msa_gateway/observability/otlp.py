"""OTLP/HTTP export of the spans of sampled requests, off the request path.

The request path only appends a small ``SpanRecord`` to a bounded queue (a full queue drops the
span and counts it: export never blocks or slows a request). One supervised task sends batches
as protobuf (``opentelemetry-proto``, the ``otel`` extra) to ``{endpoint}/v1/traces`` with
aiohttp; a receiver that is down or slow only costs dropped or failed spans, counted in
``gateway_trace_spans_total{result}``. Configured by the standard ``OTEL_*`` variables.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from msa_gateway.errors import ConfigError
from msa_gateway.observability.tracing import Tracer

if TYPE_CHECKING:
    from msa_gateway.proxy.exchange import Exchange
    from msa_gateway.proxy.request import ProxyRequest
    from msa_gateway.settings import Settings

log = logging.getLogger("msa_gateway.tracing")

SERVER, CLIENT = 2, 3  # OTLP SpanKind values
MAX_QUEUE = 2048
MAX_BATCH = 512
INTERVAL = 1.0  # seconds between exports when the batch does not fill first
TIMEOUT = 10.0
MAX_BACKOFF = 30.0


@dataclass(slots=True)
class SpanRecord:
    """One finished span, as the request path records it (hex ids, nanosecond wall-clock times)."""

    trace_id: bytes
    span_id: bytes
    parent_id: bytes | None
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, str | int] = field(default_factory=dict)
    error: bool = False


@dataclass(frozen=True, slots=True)
class OtlpConfig:
    """Where and how to export, from the standard ``OTEL_*`` variables."""

    endpoint: str
    headers: tuple[tuple[str, str], ...] = ()
    service_name: str = "msa-gateway"
    timeout: float = TIMEOUT

    @classmethod
    def from_settings(cls, settings: Settings) -> OtlpConfig:
        """Read the ``OTEL_EXPORTER_OTLP_*`` and ``OTEL_SERVICE_NAME`` settings (env or ``.env``)."""
        endpoint = settings.otel_exporter_otlp_traces_endpoint or (
            settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
        )
        raw = settings.otel_exporter_otlp_headers
        headers = tuple(
            (k.strip(), v.strip()) for k, _, v in (p.partition("=") for p in raw.split(",")) if k.strip()
        )
        return cls(endpoint, headers, settings.otel_service_name)


def server_span(req: ProxyRequest, ex: Exchange) -> SpanRecord:
    """Return the span of a whole proxied request (its start from the request's monotonic clock)."""
    trace = req.trace
    assert trace is not None
    end = time.time_ns()
    start = end - int((time.perf_counter() - req.started) * 1e9)
    service = req.route.name if req.route is not None else "unknown"
    attributes: dict[str, str | int] = {
        "http.request.method": req.method,
        "url.path": req.raw_path.decode("latin-1")[:2048],
        "http.response.status_code": ex.status,
        "msa.service": service,
        "msa.request_id": req.request_id,
        "msa.response_bytes": ex.nbytes,
    }
    if ex.error is not None:
        attributes["error.type"] = ex.error
    name = f"{req.method} {service}"
    return SpanRecord(
        trace.trace_id, trace.span_id, trace.parent_id, name, SERVER, start, end, attributes, ex.status >= 500
    )


def encode(spans: list[SpanRecord], service_name: str) -> bytes:
    """Return an ``ExportTraceServiceRequest`` holding ``spans``, serialized."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

    def value(v: str | int) -> Any:
        return AnyValue(int_value=v) if isinstance(v, int) else AnyValue(string_value=v)

    out = [
        Span(
            trace_id=bytes.fromhex(s.trace_id.decode()),
            span_id=bytes.fromhex(s.span_id.decode()),
            parent_span_id=bytes.fromhex(s.parent_id.decode()) if s.parent_id else b"",
            name=s.name,
            kind=s.kind,  # type: ignore[arg-type]
            start_time_unix_nano=s.start_ns,
            end_time_unix_nano=s.end_ns,
            attributes=[KeyValue(key=k, value=value(v)) for k, v in s.attributes.items()],
            status=Status(code=Status.STATUS_CODE_ERROR if s.error else Status.STATUS_CODE_UNSET),
        )
        for s in spans
    ]
    resource = Resource(attributes=[KeyValue(key="service.name", value=value(service_name))])
    scope = InstrumentationScope(name="msa_gateway")
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(scope=scope, spans=out)])]
    )
    return bytes(request.SerializeToString())


class Exporter:
    """A bounded span queue and the task that ships it."""

    def __init__(self, config: OtlpConfig, max_queue: int = MAX_QUEUE, interval: float = INTERVAL) -> None:
        self.config = config
        self.max_queue = max_queue
        self.interval = interval
        self.queue: deque[SpanRecord] = deque()
        self.counts = {"exported": 0, "dropped": 0, "failed": 0}
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    def submit(self, span: SpanRecord) -> None:
        """Queue a finished span; drop it (counted) when the queue is full. Never blocks."""
        if len(self.queue) >= self.max_queue:
            self.counts["dropped"] += 1
            return
        self.queue.append(span)
        if len(self.queue) >= MAX_BATCH:
            self._wake.set()

    async def run(self) -> None:
        """Export batches until cancelled; back off while the receiver fails."""
        backoff = self.interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff)
            self._wake.clear()
            ok = True
            while self.queue and ok:
                ok = await self.flush()
            backoff = self.interval if ok else min(MAX_BACKOFF, backoff * 2)

    async def flush(self) -> bool:
        """Send one batch; return whether it was accepted."""
        batch = [self.queue.popleft() for _ in range(min(MAX_BATCH, len(self.queue)))]
        if not batch:
            return True
        body = encode(batch, self.config.service_name)
        headers = {"Content-Type": "application/x-protobuf", **dict(self.config.headers)}
        try:
            session = self._session or aiohttp.ClientSession()
            self._session = session
            timeout = aiohttp.ClientTimeout(total=self.config.timeout)
            async with session.post(
                self.config.endpoint, data=body, headers=headers, timeout=timeout
            ) as resp:
                accepted = resp.status < 300
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("trace export failed", extra={"error": type(exc).__name__, "spans": len(batch)})
            accepted = False
        self.counts["exported" if accepted else "failed"] += len(batch)
        return accepted

    async def aclose(self) -> None:
        """Send what is queued (bounded by the timeout), then close the session."""
        if self.queue:
            await self.flush()
        if self._session is not None:
            await self._session.close()


def tracing_from_settings(settings: Settings) -> tuple[Tracer | None, Exporter | None]:
    """Return the tracer (None with ``TRACING=off``) and the exporter (only with ``TRACING=otlp``)."""
    if settings.tracing == "off":
        return None, None
    tracer = Tracer.from_sampler(settings.otel_traces_sampler, settings.otel_traces_sampler_arg)
    if settings.tracing != "otlp":
        return tracer, None
    try:
        import opentelemetry.proto.collector.trace.v1.trace_service_pb2  # noqa: F401 - fail at start-up
    except ImportError:
        raise ConfigError(
            "environment", "TRACING", "otlp needs the otel extra: pip install 'msa-gateway[otel]'"
        ) from None
    return tracer, Exporter(OtlpConfig.from_settings(settings))
