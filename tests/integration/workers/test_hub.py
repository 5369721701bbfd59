"""The supervisor's hub over its real Unix socket, with scripted workers: relaying, merging, retiring."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from msa_gateway.observability.metrics import Metrics
from msa_gateway.observability.tracing import Tracer
from msa_gateway.workers import merge, wire
from msa_gateway.workers.hub import Hub

REQUESTS = "gateway_requests_total"
TRACE = Tracer().start(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None)


class FakeWorker:
    """A worker that answers ``collect`` with an exposition of ``requests`` requests."""

    def __init__(self, index: int, pid: int, requests: int) -> None:
        self.index, self.pid, self.requests = index, pid, requests
        self.received: list[dict[str, Any]] = []
        self.scraped: asyncio.Queue[str] = asyncio.Queue()

    async def connect(self, path: str) -> None:
        self.reader, self.writer = await asyncio.open_unix_connection(path, limit=wire.LIMIT)
        wire.write(self.writer, {"op": "hello", "worker": self.index, "pid": self.pid})
        self.task = asyncio.create_task(self._serve())

    def exposition(self, openmetrics: bool = False) -> str:
        m = Metrics()
        for _ in range(self.requests):
            m.requests.count("svc", "GET", 200)
            m.requests.histogram("svc").observe(0.004, TRACE)
        return m.render(openmetrics).decode()

    async def _serve(self) -> None:
        while (msg := await wire.read(self.reader)) is not None:
            if msg["op"] == "collect":
                text = self.exposition(bool(msg.get("openmetrics")))
                wire.write(self.writer, {"op": "metrics", "id": msg["id"], "text": text})
            elif msg["op"] == "scraped":
                await self.scraped.put(msg["text"])
            else:
                self.received.append(msg)

    async def close(self) -> None:
        self.writer.close()
        await self.task


def requests_total(text: str | bytes) -> float:
    text = text.decode() if isinstance(text, bytes) else text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == REQUESTS)


async def test_scrapes_merge_relays_reach_the_others_and_exited_workers_keep_their_counts(
    tmp_path: Path,
) -> None:
    hub = Hub(str(tmp_path / "hub.sock"))
    await hub.start()
    a, b = FakeWorker(0, 100, 3), FakeWorker(1, 101, 4)
    try:
        for w in (a, b):
            await w.connect(hub.path)
        assert await hub.wait_connected(2, 5.0)
        wire.write(a.writer, {"op": "scrape", "id": 1})
        assert requests_total(await asyncio.wait_for(a.scraped.get(), 5)) == 7
        wire.write(a.writer, {"op": "scrape", "id": 2, "openmetrics": True})
        om = await asyncio.wait_for(a.scraped.get(), 5)
        assert om.endswith("# EOF\n") and f'# {{trace_id="{TRACE.trace_id.decode()}"}} 0.004' in om
        assert (
            sum(s.value for f in merge.parse(om, openmetrics=True) for s in f.samples if s.name == REQUESTS)
            == 7
        )

        eject = {"op": "eject", "service": "svc", "key": "svc/x", "remaining": 30.0}
        wire.write(a.writer, eject)
        async with asyncio.timeout(5):
            while not b.received:
                await asyncio.sleep(0.01)
        assert b.received == [eject] and a.received == []

        await b.close()  # b's link restarts: same process, its counts must not be counted twice
        b = FakeWorker(1, 101, 5)
        await b.connect(hub.path)
        assert await hub.wait_connected(2, 5.0)
        async with asyncio.timeout(5):  # the live ejection is replayed to the new connection
            while not b.received:
                await asyncio.sleep(0.01)
        assert b.received[0]["key"] == "svc/x" and 0 < b.received[0]["remaining"] <= 30.0
        assert requests_total(await hub.scrape()) == 8

        await b.close()  # b's process exits: its last scraped counts (5) stay in the totals
        async with asyncio.timeout(5):
            while 1 in hub.conns:
                await asyncio.sleep(0.01)
        hub.worker_exited(1, 101)
        c = FakeWorker(1, 102, 1)
        await c.connect(hub.path)
        assert await hub.wait_connected(2, 5.0)
        assert requests_total(await hub.scrape()) == 3 + 5 + 1
        await c.close()
    finally:
        await a.close()
        await hub.close()
