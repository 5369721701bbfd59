"""A WebSocket upgrade carries the trace as an HTTP request does: upstream, in the access line, as a span."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from websockets.asyncio.client import connect

from msa_gateway.settings import Settings
from tests.support.gateway import InProcessGateway, serve_gateway, service_yaml
from tests.support.otlp_receiver import OtlpReceiver, attributes
from tests.support.ws_backend import WsBackend, ws_backend

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID, PARENT_SPAN = PARENT[3:35], PARENT[36:52]


@pytest.fixture
async def backend() -> AsyncIterator[WsBackend]:
    async with ws_backend() as b:
        yield b


async def upstream_traceparent(gw: InProcessGateway, backend: WsBackend, headers: dict[str, str]) -> str:
    """Open ``/chat/headers``, return the ``traceparent`` the instance got, close, wait for the access line."""
    async with connect(f"ws://127.0.0.1:{gw.port}/chat/headers", additional_headers=headers) as ws:
        got = {k.lower(): v for k, v in json.loads(await ws.recv())}
    assert await backend.closed.get() == 1000
    return str(got["traceparent"])


def access_trace_id(gw: InProcessGateway) -> str:
    (line,) = [x for x in map(json.loads, gw.access_lines()) if x.get("event") == "websocket"]
    return str(line["trace_id"])


async def test_the_upgrade_sends_a_child_traceparent_and_the_access_line_has_the_trace(
    backend: WsBackend,
) -> None:
    async with serve_gateway(service_yaml({"chat": [backend.port]})) as gw:  # TRACING=propagate
        sent = await upstream_traceparent(gw, backend, {"traceparent": PARENT})
        version, trace_id, span_id, flags = sent.split("-")
        assert (version, trace_id, flags) == ("00", TRACE_ID, "01")  # the client's trace, still sampled
        assert span_id != PARENT_SPAN and len(span_id) == 16  # the gateway's span is the parent now
        assert access_trace_id(gw) == TRACE_ID


async def test_without_a_client_trace_a_new_one_starts_and_is_logged(backend: WsBackend) -> None:
    async with serve_gateway(service_yaml({"chat": [backend.port]})) as gw:
        sent = await upstream_traceparent(gw, backend, {})
        assert access_trace_id(gw) == sent.split("-")[1] != TRACE_ID


async def test_a_sampled_connection_is_exported_as_the_server_span_the_instance_descends_from(
    backend: WsBackend,
) -> None:
    async with OtlpReceiver() as receiver:
        settings = Settings(_env_file=None, tracing="otlp", otel_exporter_otlp_endpoint=receiver.endpoint)  # type: ignore[call-arg]
        async with serve_gateway(service_yaml({"chat": [backend.port]}), settings=settings) as gw:
            sent = await upstream_traceparent(gw, backend, {"traceparent": PARENT})
            (span,) = await receiver.wait_for(1)
    assert span.kind == Span.SPAN_KIND_SERVER and span.trace_id.hex() == TRACE_ID
    assert span.parent_span_id.hex() == PARENT_SPAN and span.span_id.hex() == sent.split("-")[2]
    assert attributes(span)["http.response.status_code"] == 101
