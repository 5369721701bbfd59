"""An OTLP/HTTP trace receiver on 127.0.0.1 that decodes the real protobuf payloads."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.support.procs import free_port


class OtlpReceiver:
    """Collects exported spans; can be told to hold requests (a slow receiver) or refuse them."""

    def __init__(self) -> None:
        self.port = free_port()
        self.spans: list[Span] = []
        self.resources: list[dict[str, Any]] = []
        self.requests = 0
        self.status = 200
        self.hold: asyncio.Event | None = None  # while set and not released, requests wait
        self.held = asyncio.Event()
        self.arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _traces(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.hold is not None:
            self.held.set()
            await self.hold.wait()
        body = ExportTraceServiceRequest()
        body.ParseFromString(await request.read())
        for rs in body.resource_spans:
            self.resources.append({kv.key: kv.value.string_value for kv in rs.resource.attributes})
            for ss in rs.scope_spans:
                self.spans.extend(ss.spans)
        self.arrived.set()
        return web.Response(status=self.status, content_type="application/x-protobuf", body=b"")

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Span]:
        """Wait until at least ``count`` spans arrived."""
        async with asyncio.timeout(timeout):
            while len(self.spans) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.spans

    async def __aenter__(self) -> OtlpReceiver:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.hold is not None:
            self.hold.set()
        if self._runner is not None:
            await self._runner.cleanup()


def attributes(span: Span) -> dict[str, Any]:
    """Return a span's attributes as plain values."""
    out: dict[str, Any] = {}
    for kv in span.attributes:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out
