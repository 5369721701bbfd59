"""Retries only where safe, passive ejection, caps, deadlines and body limits, against recording backends."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest

from msa_gateway.settings import Settings
from tests.support.gateway import serve_gateway
from tests.support.procs import free_port
from tests.support.recorder import RecordedRequest, Recorder, Reply


def _config(ports: list[int], **options: Any) -> dict[str, Any]:
    options.setdefault("health_check", {"path": None})
    return {"services": {"svc": {"instances": [{"host": "127.0.0.1", "port": p} for p in ports], **options}}}


async def _call(client: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, bytes]:
    async with client.request(method, url, **kw) as r:
        return r.status, await r.read()


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_refused_connection_is_retried_on_another_instance_for_every_method(method: str) -> None:
    async with Recorder(Reply(200, body=b"alive")) as good:
        dead = free_port()
        async with serve_gateway(_config([dead, good.port])) as gw, aiohttp.ClientSession() as c:
            for _ in range(4):
                assert await _call(c, method, f"{gw.url}/svc/x", data=b"payload") == (200, b"alive")
            assert len(good.requests) == 4
            assert all(r.body == (b"payload" if method != "GET" or r.body else b"") for r in good.requests)


async def test_post_reset_after_sending_is_not_retried_and_fails_with_502() -> None:
    async with Recorder(Reply.resetting()) as bad, Recorder(Reply(200, body=b"ok")) as good:
        async with serve_gateway(_config([bad.port, good.port])) as gw, aiohttp.ClientSession() as c:
            statuses = [await _call(c, "POST", f"{gw.url}/svc/x", data=b"once") for _ in range(2)]
            assert sorted(s for s, _ in statuses) == [200, 502]
            assert (
                len(bad.requests) == 1 and len(good.requests) == 1
            )  # the POST that reached `bad` was not re-sent


async def test_get_reset_after_sending_is_retried_elsewhere() -> None:
    async with Recorder(Reply.resetting()) as bad, Recorder(Reply(200, body=b"ok")) as good:
        async with serve_gateway(_config([bad.port, good.port])) as gw, aiohttp.ClientSession() as c:
            for _ in range(4):
                assert await _call(c, "GET", f"{gw.url}/svc/x") == (200, b"ok")


async def test_put_body_is_replayed_byte_for_byte_on_retry() -> None:
    body = bytes(range(256)) * 100
    async with Recorder(Reply.resetting()) as bad, Recorder(Reply(200, body=b"ok")) as good:
        async with serve_gateway(_config([bad.port, good.port])) as gw, aiohttp.ClientSession() as c:
            for _ in range(2):
                assert await _call(c, "PUT", f"{gw.url}/svc/x", data=body) == (200, b"ok")
            assert [r.body for r in good.requests] == [body, body]


async def test_status_retry_is_opt_in() -> None:
    async with Recorder(Reply(503, body=b"busy")) as bad, Recorder(Reply(200, body=b"ok")) as good:
        async with serve_gateway(_config([bad.port, good.port])) as gw, aiohttp.ClientSession() as c:
            results = {await _call(c, "GET", f"{gw.url}/svc/x") for _ in range(2)}
            assert results == {(503, b"busy"), (200, b"ok")}  # relayed unchanged without opt-in
        cfg = _config([bad.port, good.port], retry={"retry_on_status": [503]})
        async with serve_gateway(cfg) as gw, aiohttp.ClientSession() as c:
            results = {await _call(c, "GET", f"{gw.url}/svc/x") for _ in range(4)}
            assert results == {(200, b"ok")}
            # a POST is never retried on a status: the 503 is relayed
            posts = {await _call(c, "POST", f"{gw.url}/svc/x", data=b"p") for _ in range(2)}
            assert (503, b"busy") in posts


async def test_failing_instance_is_ejected_and_gets_no_traffic() -> None:
    async with Recorder(Reply(502, body=b"bad")) as bad, Recorder(Reply(200, body=b"ok")) as good:
        cfg = _config([bad.port, good.port], outlier={"consecutive_failures": 3, "base_ejection_time": 30})
        async with serve_gateway(cfg) as gw, aiohttp.ClientSession() as c:
            for _ in range(6):
                await _call(c, "GET", f"{gw.url}/svc/x")
            assert len(bad.requests) == 3
            for _ in range(10):
                assert await _call(c, "GET", f"{gw.url}/svc/x") == (200, b"ok")
            assert len(bad.requests) == 3
            async with c.get(f"{gw.url}/metrics") as r:
                text = (await r.read()).decode()
            assert (
                f'gateway_instance_ejections_total{{instance="127.0.0.1:{bad.port}",service="svc"}} 1.0'
                in text
            )
            async with c.get(f"{gw.url}/services/svc/health") as r:
                doc = orjson.loads(await r.read())
            state = {i["address"]: i for i in doc["instances"]}
            assert state[f"127.0.0.1:{bad.port}"]["ejected"] is True
            assert state[f"127.0.0.1:{good.port}"]["ejected"] is False


async def test_ejection_never_exceeds_the_share_cap() -> None:
    async with Recorder(Reply(502, body=b"bad")) as a, Recorder(Reply(502, body=b"bad")) as b:
        cfg = _config([a.port, b.port], outlier={"consecutive_failures": 1}, panic_threshold=0)
        async with serve_gateway(cfg) as gw, aiohttp.ClientSession() as c:
            for _ in range(6):
                assert (await _call(c, "GET", f"{gw.url}/svc/x"))[0] == 502
            assert gw.runtime.guards["svc"].outlier.ejections_total >= 1
            assert len(gw.runtime.guards["svc"].outlier.ejected_keys(time.monotonic())) == 1  # 50% of 2


async def test_service_cap_overflow_answers_503_at_once() -> None:
    release = asyncio.Event()

    async def slow(_: RecordedRequest) -> Reply:
        await release.wait()
        return Reply(200, body=b"done")

    async with Recorder(slow) as rec:
        cfg = _config([rec.port], limits={"max_requests_per_service": 1, "max_requests_per_instance": 1})
        async with serve_gateway(cfg) as gw, aiohttp.ClientSession() as c:
            first = asyncio.create_task(_call(c, "GET", f"{gw.url}/svc/slow"))
            await rec.next_request()
            started = time.monotonic()
            async with c.get(f"{gw.url}/svc/second") as r:
                assert r.status == 503
                assert r.headers["Retry-After"] == "1"
                assert orjson.loads(await r.read())["error"] == "overloaded"
            assert time.monotonic() - started < 0.5
            release.set()
            assert await first == (200, b"done")
            async with c.get(f"{gw.url}/metrics") as r:
                assert 'gateway_overflow_total{service="svc"} 1.0' in (await r.read()).decode()


async def test_total_deadline_gives_504() -> None:
    async with Recorder(Reply.hanging()) as rec:
        cfg = _config([rec.port], timeouts={"connect": 1, "read": 30, "total": 0.4})
        async with serve_gateway(cfg) as gw, aiohttp.ClientSession() as c:
            started = time.monotonic()
            status, body = await _call(c, "GET", f"{gw.url}/svc/x")
            elapsed = time.monotonic() - started
            assert status == 504 and orjson.loads(body)["error"] == "gateway_timeout"
            assert 0.35 < elapsed < 1.5


async def test_read_timeout_retry_is_opt_in_and_bounded() -> None:
    async with Recorder(Reply.hanging()) as hung, Recorder(Reply(200, body=b"ok")) as good:
        cfg = _config(
            [hung.port, good.port], timeouts={"connect": 1, "read": 0.3}, retry={"retry_on_timeout": True}
        )
        async with serve_gateway(cfg) as gw, aiohttp.ClientSession() as c:
            latencies = []
            for _ in range(4):
                started = time.monotonic()
                assert await _call(c, "GET", f"{gw.url}/svc/x") == (200, b"ok")
                latencies.append(time.monotonic() - started)
            assert max(latencies) < 0.3 + 0.3


async def test_body_larger_than_limit_is_413_with_and_without_length() -> None:
    async with Recorder(Reply(200, body=b"ok")) as rec:
        async with serve_gateway(_config([rec.port], max_body_size=1000)) as gw, aiohttp.ClientSession() as c:
            status, body = await _call(c, "POST", f"{gw.url}/svc/x", data=b"x" * 1001)
            assert status == 413 and orjson.loads(body)["error"] == "payload_too_large"

            async def chunks() -> Any:
                for _ in range(10):
                    yield b"y" * 300

            status, _ = await _call(c, "POST", f"{gw.url}/svc/x", data=chunks())
            assert status == 413
            assert all(len(r.body) <= 1000 for r in rec.requests)
            assert await _call(c, "POST", f"{gw.url}/svc/x", data=b"x" * 1000) == (200, b"ok")


@pytest.mark.parametrize("length", [100, 200_000], ids=["small-read-whole", "large-streamed"])
async def test_stalled_request_body_gets_408_and_the_connection_closes(length: int) -> None:
    async with Recorder(Reply(200, body=b"ok")) as rec:
        settings = Settings(_env_file=None, body_timeout=0.3)  # type: ignore[call-arg]
        async with serve_gateway(_config([rec.port]), settings=settings) as gw:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(
                f"POST /svc/upload HTTP/1.1\r\nHost: gw\r\nContent-Length: {length}\r\n\r\n".encode()
                + b"x" * 10
            )
            await writer.drain()
            started = time.monotonic()
            data = await asyncio.wait_for(reader.read(), 5)  # read until the gateway closes
            elapsed = time.monotonic() - started
            writer.close()
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408")
            assert b"connection: close" in head.lower()
            assert orjson.loads(body)["error"] == "request_timeout"
            assert 0.25 < elapsed < 2.0
            assert all(len(r.body) < length for r in rec.requests)  # never a complete request upstream
