"""A fake ``UpstreamClient`` and an in-memory ASGI driver: the whole proxy handler without sockets.

Each instance address gets a script of steps, one per request it receives (the last step
repeats): a ``Reply`` to answer, an ``UpstreamError`` to raise, or a ``Hang`` that waits until
released. ``FakeUpstream.calls`` records every request that reached the seam, with its body;
``cancelled`` the addresses whose hanging request the gateway cancelled.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from msa_gateway.errors import UpstreamError
from msa_gateway.model import Discovered, Instance, ServiceOptions
from msa_gateway.observability.access import AccessLog
from msa_gateway.proxy.handler import ProxyApp
from msa_gateway.runtime import Runtime
from msa_gateway.settings import Settings, parse_config

Headers = list[tuple[bytes, bytes]]


@dataclass
class Reply:
    """Answer with this status, headers and body chunks (a ``fail_after`` error ends the body early)."""

    status: int = 200
    chunks: Sequence[bytes] = (b'{"ok":true}',)
    headers: Sequence[tuple[bytes, bytes]] = ((b"content-type", b"application/json"),)
    fail_after: UpstreamError | None = None
    hold: bool = False  # after the chunks, wait (for ``close``) instead of ending the body


@dataclass
class Hang:
    """Wait for ``release`` before answering ``then`` (forever if it is never set)."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    then: Reply = field(default_factory=Reply)
    entered: asyncio.Event = field(default_factory=asyncio.Event)


Step = Reply | UpstreamError | Hang


@dataclass
class Call:
    """One request that reached the seam."""

    address: str
    method: str
    target: str
    headers: Headers
    body: bytes


class FakeResponse:
    """An ``UpstreamResponse`` over scripted chunks."""

    def __init__(self, reply: Reply) -> None:
        self.status: int = reply.status
        self.headers: list[tuple[bytes, bytes]] = list(reply.headers)
        self._chunks = list(reply.chunks)
        self._fail = reply.fail_after
        self.released = self.closed = False
        self.gate: asyncio.Event | None = asyncio.Event() if reply.hold else None

    async def read(self) -> bytes:
        if self.closed:
            raise UpstreamError("closed", "disconnected")
        if self._chunks:
            chunk = self._chunks.pop(0)
            return chunk
        if self._fail is not None:
            raise self._fail
        if self.gate is not None:
            await self.gate.wait()
            if self.closed:
                raise UpstreamError("closed", "disconnected")
        return b""

    def at_eof(self) -> bool:
        return not self._chunks and self._fail is None and self.gate is None

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True
        if self.gate is not None:
            self.gate.set()


class FakeUpstream:
    """Scripted instances behind the ``UpstreamClient`` seam."""

    name = "fake"

    @classmethod
    def create(cls, tasks: object, writes: object = None) -> FakeUpstream:
        return cls()

    def __init__(self) -> None:
        self.scripts: dict[str, list[Step]] = {}
        self.calls: list[Call] = []
        self.responses: list[FakeResponse] = []
        self.retained: set[str] | None = None
        self.released: list[str] = []
        self.cancelled: list[str] = []  # addresses whose hanging request was cancelled

    def script(self, address: str, *steps: Step) -> None:
        self.scripts[address] = list(steps)

    def _next(self, address: str) -> Step:
        steps = self.scripts.get(address) or [Reply()]
        return steps.pop(0) if len(steps) > 1 else steps[0]

    async def send(
        self,
        instance: Instance,
        options: ServiceOptions,
        method: str,
        target: str,
        headers: Headers,
        body: bytes | AsyncIterator[bytes] | None,
        content_length: int | None,
    ) -> FakeResponse:
        step = self._next(instance.address)
        if isinstance(step, UpstreamError) and not step.request_sent:
            self.calls.append(Call(instance.address, method, target, headers, b""))
            raise step
        data = body if isinstance(body, bytes) else b""
        if body is not None and not isinstance(body, bytes):
            data = b"".join([chunk async for chunk in body])
        self.calls.append(Call(instance.address, method, target, headers, data))
        if isinstance(step, Hang):
            step.entered.set()
            try:
                await step.release.wait()
            except asyncio.CancelledError:
                self.cancelled.append(instance.address)
                raise
            step = step.then
        if isinstance(step, UpstreamError):
            raise step
        resp = FakeResponse(step)
        self.responses.append(resp)
        return resp

    def retain(self, addresses: set[str]) -> None:
        self.retained = addresses

    def release(self, addresses: Iterable[str]) -> None:
        self.released.extend(addresses)

    async def aclose(self) -> None:
        pass

    def hits(self, address: str) -> int:
        return sum(1 for c in self.calls if c.address == address)


def instances(*ports: int, service: str = "svc") -> Discovered:
    return {service: tuple(Instance(id=f"i{p}", host="127.0.0.1", port=p) for p in ports)}


def make_runtime(
    services: dict[str, Any] | None = None,
    *,
    routes: list[dict[str, Any]] | None = None,
    gateway: dict[str, Any] | None = None,
    **defaults: Any,
) -> tuple[Runtime, FakeUpstream, io.StringIO]:
    """A runtime over the fake upstream, no probes, an in-memory access log."""
    data: dict[str, Any] = {
        "defaults": {"health_check": {"path": None}, **defaults},
        "services": services or {},
    }
    if routes is not None:
        data["routes"] = routes
    if gateway is not None:
        data["gateway"] = gateway
    config = parse_config(data, "test.yaml")
    upstream = FakeUpstream()
    log = io.StringIO()
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    rt = Runtime(
        settings,
        config,
        upstream=upstream,
        access=AccessLog(stream=log),
    )
    return rt, upstream, log


@dataclass
class Answer:
    """What the client received."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes
    messages: list[dict[str, Any]]

    def json(self) -> Any:
        return orjson.loads(self.body)


async def call(
    app: ProxyApp,
    method: str = "GET",
    path: str = "/svc/x",
    *,
    headers: Headers | None = None,
    body: Sequence[bytes] = (),
    disconnect: asyncio.Event | None = None,
    on_send: Any = None,
    body_ends: bool = True,
) -> Answer:
    """Drive one request through ``app`` as an ASGI server would."""
    path_only, _, query = path.partition("?")
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": path_only,
        "raw_path": path_only.encode(),
        "query_string": query.encode(),
        "headers": headers or [(b"host", b"gw")],
        "client": ("10.0.0.9", 5555),
        "scheme": "http",
    }
    pending = [
        {"type": "http.request", "body": chunk, "more_body": i < len(body) - 1 or not body_ends}
        for i, chunk in enumerate(body)
    ]
    sent: list[dict[str, Any]] = []
    if body and not any(name in {b"content-length", b"transfer-encoding"} for name, _ in scope["headers"]):
        scope["headers"] = [*scope["headers"], (b"content-length", b"%d" % sum(map(len, body)))]

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        if disconnect is not None:
            await disconnect.wait()
        else:
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if on_send is not None:
            on_send(message)

    await app(scope, receive, send)
    app.rt.access.flush()
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    status = start["status"] if start else 0
    hdrs = dict(start["headers"]) if start else {}
    data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Answer(status, hdrs, data, sent)


def access_lines(log: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in log.getvalue().splitlines() if line]
