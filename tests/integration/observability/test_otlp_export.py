"""Spans of proxied requests reach a real OTLP/HTTP receiver; a down or slow receiver never holds a request."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from msa_gateway.settings import Settings
from tests.support.gateway import serve_gateway, service_yaml
from tests.support.otlp_receiver import OtlpReceiver, attributes
from tests.support.procs import free_port
from tests.support.recorder import Recorder, Reply

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def otlp_settings(endpoint: str, **extra: Any) -> Settings:
    return Settings(_env_file=None, tracing="otlp", otel_exporter_otlp_endpoint=endpoint, **extra)  # type: ignore[call-arg]


async def get(url: str, headers: dict[str, str] | None = None) -> int:
    async with aiohttp.ClientSession() as client, client.get(url, headers=headers) as r:
        await r.read()
        return r.status


async def test_a_retried_request_arrives_as_a_server_span_with_one_child_per_attempt() -> None:
    dead = free_port()
    async with OtlpReceiver() as receiver, Recorder(Reply(200, body=b"ok")) as rec:
        config = service_yaml({"svc": [dead, rec.port]})
        async with serve_gateway(config, settings=otlp_settings(receiver.endpoint)) as gw:
            # round robin starts with the first instance, the dead one: refused, then retried
            assert await get(f"{gw.url}/svc/x", {"traceparent": PARENT}) == 200
            spans = await receiver.wait_for(3)
    servers = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER]
    clients = [s for s in spans if s.kind == Span.SPAN_KIND_CLIENT]
    assert len(servers) == 1 and len(clients) == 2
    (server,) = servers
    assert server.trace_id.hex() == PARENT[3:35] and server.parent_span_id.hex() == PARENT[36:52]
    assert all(c.parent_span_id == server.span_id and c.trace_id == server.trace_id for c in clients)
    refused = [c for c in clients if attributes(c).get("error.type") == "connect_refused"]
    assert len(refused) == 1 and attributes(refused[0])["msa.retry_reason"] == "connect_refused"
    assert receiver.resources[0]["service.name"] == "msa-gateway"
    sent = {v.split(b"-")[2].decode() for r in rec.requests for v in r.header_values("traceparent")}
    answered = {c.span_id.hex() for c in clients if attributes(c).get("http.response.status_code") == 200}
    assert answered == sent


async def test_the_sampler_decides_what_is_exported() -> None:
    async with OtlpReceiver() as receiver, Recorder(Reply(200, body=b"ok")) as rec:
        settings = otlp_settings(
            receiver.endpoint, otel_traces_sampler="parentbased_traceidratio", otel_traces_sampler_arg=0.0
        )
        async with serve_gateway(service_yaml({"svc": [rec.port]}), settings=settings) as gw:
            for _ in range(20):
                assert await get(f"{gw.url}/svc/x") == 200  # new traces at ratio 0: none sampled
            assert await get(f"{gw.url}/svc/x", {"traceparent": PARENT}) == 200  # the parent sampled it
            spans = await receiver.wait_for(2)
            await asyncio.sleep(0)
    assert {s.trace_id.hex() for s in spans} == {PARENT[3:35]}


async def test_a_hung_receiver_never_holds_a_request() -> None:
    async with OtlpReceiver() as receiver, Recorder(Reply(200, body=b"ok")) as rec:
        receiver.hold = asyncio.Event()
        async with serve_gateway(
            service_yaml({"svc": [rec.port]}), settings=otlp_settings(receiver.endpoint)
        ) as gw:
            assert await get(f"{gw.url}/svc/x") == 200
            await asyncio.wait_for(receiver.held.wait(), 10)  # an export is stuck in the receiver now
            results = await asyncio.gather(*(get(f"{gw.url}/svc/x") for _ in range(50)))
            assert results == [200] * 50  # all answered while the export hangs
            receiver.hold.set()


async def test_a_receiver_that_is_down_costs_failed_spans_not_requests() -> None:
    async with Recorder(Reply(200, body=b"ok")) as rec:
        settings = otlp_settings(f"http://127.0.0.1:{free_port()}")
        async with serve_gateway(service_yaml({"svc": [rec.port]}), settings=settings) as gw:
            assert [await get(f"{gw.url}/svc/x") for _ in range(10)] == [200] * 10
            exporter = gw.runtime.exporter
            assert exporter is not None
            async with asyncio.timeout(10):
                while exporter.counts["failed"] < 20:
                    await asyncio.sleep(0.05)
            async with aiohttp.ClientSession() as client, client.get(f"{gw.url}/metrics") as r:
                text = await r.text()
            assert 'gateway_trace_spans_total{result="failed"}' in text
