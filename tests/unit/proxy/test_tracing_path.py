"""Trace context through the request path: what the instance receives, what the access line and the spans say."""

from __future__ import annotations

import random

from msa_gateway.errors import UpstreamError
from msa_gateway.observability.otlp import CLIENT, SERVER, Exporter, OtlpConfig, encode
from msa_gateway.observability.tracing import Tracer, parse_traceparent
from msa_gateway.proxy.handler import ProxyApp
from msa_gateway.runtime import Runtime
from tests.support.fake_upstream import Reply, access_lines, call, instances, make_runtime

A, B = "127.0.0.1:9001", "127.0.0.1:9002"
PARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def traced(rt: Runtime, ratio: float = 1.0) -> Exporter:
    rt.tracer = Tracer(ratio, random.Random(1))
    rt.exporter = Exporter(OtlpConfig("http://127.0.0.1:9/v1/traces"))
    rt.metrics.track_exporter(rt.exporter)
    return rt.exporter


def upstream_header(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for k, v in headers if k == name]


async def test_the_instance_gets_a_child_of_the_clients_trace_and_the_access_line_names_it() -> None:
    rt, up, log = make_runtime()
    traced(rt)
    rt.apply(instances(9001))
    await call(ProxyApp(rt), headers=[(b"traceparent", PARENT), (b"tracestate", b"congo=t61rcWkgMzE")])
    (sent,) = upstream_header(up.calls[0].headers, b"traceparent")
    child = parse_traceparent(sent)
    assert child is not None and child.trace_id == PARENT[3:35] and child.span_id != PARENT[36:52]
    assert upstream_header(up.calls[0].headers, b"tracestate") == [b"congo=t61rcWkgMzE"]
    assert access_lines(log)[0]["trace_id"] == PARENT[3:35].decode()


async def test_a_malformed_traceparent_is_replaced_never_forwarded() -> None:
    rt, up, log = make_runtime()
    traced(rt)
    rt.apply(instances(9001))
    await call(ProxyApp(rt), headers=[(b"traceparent", b"00-zzzz-evil"), (b"tracestate", b"a=1")])
    (sent,) = upstream_header(up.calls[0].headers, b"traceparent")
    assert b"zzzz" not in sent and parse_traceparent(sent) is not None
    assert upstream_header(up.calls[0].headers, b"tracestate") == []
    assert access_lines(log)[0]["trace_id"] == sent[3:35].decode()


async def test_with_tracing_off_the_headers_pass_through_untouched() -> None:
    rt, up, log = make_runtime()
    rt.tracer = rt.exporter = None
    rt.apply(instances(9001))
    await call(ProxyApp(rt), headers=[(b"traceparent", b"00-zzzz-evil")])
    assert upstream_header(up.calls[0].headers, b"traceparent") == [b"00-zzzz-evil"]
    assert "trace_id" not in access_lines(log)[0]


async def test_a_retried_request_exports_one_server_span_and_a_child_per_attempt() -> None:
    rt, up, _ = make_runtime()
    exporter = traced(rt)
    rt.apply(instances(9001, 9002))
    up.script(A, UpstreamError("refused", "connect_refused", request_sent=False))
    up.script(B, Reply(201))
    await call(ProxyApp(rt), "POST", headers=[(b"traceparent", PARENT)], body=[b"x"])
    spans = list(exporter.queue)
    server = [s for s in spans if s.kind == SERVER]
    attempts = [s for s in spans if s.kind == CLIENT]
    assert len(server) == 1 and len(attempts) == 2
    (srv,) = server
    assert srv.parent_id == PARENT[36:52] and srv.attributes["http.response.status_code"] == 201
    assert all(a.parent_id == srv.span_id and a.trace_id == srv.trace_id for a in attempts)
    first, second = attempts
    assert first.error and first.attributes["msa.retry_reason"] == "connect_refused"
    assert second.attributes["http.response.status_code"] == 201 and not second.error
    sent = {
        parse_traceparent(c.headers[-1][1] if c.headers[-1][0] == b"traceparent" else b"") for c in up.calls
    }
    assert encode(spans, "gw")  # the records encode as OTLP protobuf
    assert all(p is None or p.trace_id == srv.trace_id for p in sent)


async def test_unsampled_requests_export_nothing_but_still_propagate() -> None:
    rt, up, _ = make_runtime()
    exporter = traced(rt, ratio=0.0)
    rt.apply(instances(9001))
    await call(ProxyApp(rt))
    assert not exporter.queue
    (sent,) = upstream_header(up.calls[0].headers, b"traceparent")
    assert sent.endswith(b"-00")


async def test_a_full_queue_drops_spans_and_counts_them() -> None:
    rt, _up, _ = make_runtime()
    exporter = traced(rt)
    exporter.max_queue = 1
    rt.apply(instances(9001))
    await call(ProxyApp(rt))
    assert len(exporter.queue) == 1 and exporter.counts["dropped"] == 1
    assert rt.metrics.registry.get_sample_value("gateway_trace_spans_total", {"result": "dropped"}) == 1


async def test_the_first_attempt_gets_the_ready_traceparent_and_a_retry_a_new_child() -> None:
    rt, up, log = make_runtime()
    rt.tracer = Tracer(1.0, random.Random(2))  # propagation only: no exporter
    rt.exporter = None
    rt.apply(instances(9001, 9002))
    up.script(A, UpstreamError("refused", "connect_refused", request_sent=False), Reply(200))
    up.script(B, UpstreamError("refused", "connect_refused", request_sent=False), Reply(200))
    await call(ProxyApp(rt))
    sent = [upstream_header(c.headers, b"traceparent")[0] for c in up.calls]
    assert len(sent) == 3 and len(set(sent)) == 3  # A refused, B refused, A answered
    parents = [parse_traceparent(v) for v in sent]
    trace_id = access_lines(log)[0]["trace_id"].encode()
    assert all(p is not None and p.trace_id == trace_id and p.flags == 1 for p in parents)
    ready = Tracer(1.0, random.Random(2)).start(None, None)  # the same draw: the trace the request had
    assert ready.trace_id == trace_id and sent[0] == ready.first
    assert all(p is not None and p.span_id not in (ready.spare, ready.span_id) for p in parents[1:])


async def test_an_exported_first_attempt_uses_the_span_id_drawn_with_the_trace() -> None:
    rt, up, _ = make_runtime()
    exporter = traced(rt)
    rt.apply(instances(9001))
    await call(ProxyApp(rt))
    (client,) = [s for s in exporter.queue if s.kind == CLIENT]
    ready = Tracer(1.0, random.Random(1)).start(None, None)  # traced() seeds the tracer with 1
    assert client.span_id == ready.spare and client.trace_id == ready.trace_id
    assert upstream_header(up.calls[0].headers, b"traceparent") == [ready.first]
