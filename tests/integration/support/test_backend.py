"""The controllable backend process answers, streams, counts and misbehaves as advertised."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.support.backend import BackendProcess, pattern_sha256, running_backends


@pytest.fixture(scope="module")
def shared() -> Iterator[BackendProcess]:
    with BackendProcess("shared") as backend:
        yield backend


@pytest.fixture
def backend(shared: BackendProcess) -> BackendProcess:
    shared.control(mode="normal", health=200, delay=1.0, clear_counts=True)
    return shared


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


async def test_health_and_echo(backend: BackendProcess) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{backend.url}/health") as resp:
            assert (resp.status, await resp.json()) == (200, {"status": "ok"})
        url = f"{backend.url}/svc/a%2Fb?x=1&x=2"
        async with session.post(url, data=b"hello", headers={"X-Dup": "v", "X-Request-ID": "e1"}) as resp:
            echo = await resp.json()
    assert echo["instance"] == "shared"
    assert (echo["method"], echo["path"], echo["raw_path"], echo["query"]) == (
        "POST",
        "/svc/a/b",
        "/svc/a%2Fb",
        "x=1&x=2",
    )
    assert ["x-dup", "v"] in echo["headers"]
    assert (echo["body_len"], echo["body_sha256"]) == (5, hashlib.sha256(b"hello").hexdigest())


async def test_health_follows_control(backend: BackendProcess) -> None:
    assert backend.control(health=503)["health"] == 503
    assert backend.request("GET", "/health")[0] == 503
    assert backend.request("GET", "/anything")[0] == 200
    backend.control(health=200)
    assert backend.request("GET", "/health")[0] == 200


def test_counts_per_request_id(backend: BackendProcess) -> None:
    for rid in ("a", "a", "b"):
        backend.request("GET", "/x", headers={"X-Request-ID": rid})
    backend.request("GET", "/x")
    backend.request("GET", "/health", headers={"X-Request-ID": "h"})
    assert backend.counts() == {"a": 2, "b": 1}
    assert backend.total() == 4
    backend.control(clear_counts=True)
    assert backend.counts() == {}


async def test_hang_never_answers_but_counts(backend: BackendProcess) -> None:
    backend.control(mode="hang")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(asyncio.TimeoutError):
            await session.get(
                f"{backend.url}/x", headers={"X-Request-ID": "h1"}, timeout=aiohttp.ClientTimeout(total=0.4)
            )
    assert backend.counts() == {"h1": 1}
    assert backend.request("GET", "/health")[0] == 200


async def test_slow_answers_after_delay(backend: BackendProcess) -> None:
    backend.control(mode="slow", delay=0.4)
    started = time.monotonic()
    assert backend.request("GET", "/x")[0] == 200
    assert time.monotonic() - started >= 0.4


def test_error500(backend: BackendProcess) -> None:
    backend.control(mode="error500")
    assert backend.request("GET", "/x") == (500, b'{"error":"injected","instance":"shared"}')


def test_reset_sends_rst_without_answer(backend: BackendProcess) -> None:
    backend.control(mode="reset")
    with socket.create_connection(("127.0.0.1", backend.port), timeout=5) as s:
        s.sendall(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        with pytest.raises(ConnectionResetError):
            s.recv(100)
    backend.control(mode="normal")
    assert backend.request("GET", "/x")[0] == 200


def test_unknown_mode_is_refused(backend: BackendProcess) -> None:
    with pytest.raises(RuntimeError, match="refused"):
        backend.control(mode="sideways")


async def test_stream_sends_spaced_events(backend: BackendProcess) -> None:
    arrivals: list[float] = []
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{backend.url}/stream?n=4&interval=0.15") as resp,
    ):
        assert resp.headers["Content-Type"] == "text/event-stream"
        lines = []
        async for line in resp.content:
            if line.startswith(b"data: "):
                lines.append(line)
                arrivals.append(time.monotonic())
    assert [line.split()[1] for line in lines] == [b"0", b"1", b"2", b"3"]
    assert arrivals[-1] - arrivals[0] >= 0.4


async def test_bytes_streams_a_large_chunked_body(backend: BackendProcess) -> None:
    n = 5 * 1024 * 1024 + 7
    sha = hashlib.sha256()
    async with aiohttp.ClientSession() as session, session.get(f"{backend.url}/bytes?n={n}") as resp:
        assert resp.headers["Transfer-Encoding"] == "chunked"
        async for chunk in resp.content.iter_chunked(1 << 16):
            sha.update(chunk)
    assert sha.hexdigest() == pattern_sha256(n)


async def test_upload_hashes_a_streamed_body(backend: BackendProcess) -> None:
    block = b"u" * (1 << 20)
    sha = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(16):
            sha.update(block)
            yield block

    async with aiohttp.ClientSession() as session, session.post(f"{backend.url}/upload", data=body()) as resp:
        answer = await resp.json()
    assert (answer["size"], answer["sha256"]) == (16 << 20, sha.hexdigest())
    assert answer["chunks"] > 1


def test_kill_and_restart_on_the_same_port() -> None:
    with BackendProcess("k") as backend:
        backend.request("GET", "/x", headers={"X-Request-ID": "before"})
        pid = backend.proc.pid if backend.proc else None
        backend.kill()
        assert not backend.running
        assert backend.proc is not None and backend.proc.returncode == -9
        assert refused(backend.port)
        backend.restart()
        assert backend.proc is not None and backend.proc.pid != pid
        assert backend.request("GET", "/health")[0] == 200
        assert backend.counts() == {}


def test_stop_is_graceful_even_with_a_hung_request() -> None:
    with BackendProcess("s") as backend:
        backend.control(mode="hang")
        with socket.create_connection(("127.0.0.1", backend.port)) as s:
            s.sendall(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
            deadline = time.monotonic() + 5
            while backend.total() < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            started = time.monotonic()
            backend.stop()
            assert time.monotonic() - started < 4
        # uvicorn re-raises the captured SIGTERM after its graceful shutdown; -9 would mean we had to kill it
        assert backend.proc is not None and backend.proc.returncode == -signal.SIGTERM
        assert refused(backend.port)


def test_running_backends_start_together() -> None:
    with running_backends("a", "b") as (a, b):
        assert a.port != b.port
        assert [x.control()["instance"] for x in (a, b)] == ["a", "b"]
        assert a.instance().address == f"127.0.0.1:{a.port}"
    assert not a.running and not b.running
