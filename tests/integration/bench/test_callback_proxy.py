"""The ``callback-proxy`` peer against real backends: what it forwards, in order, and what it answers when a
backend is gone. It is a measuring stick, so the tests pin what makes its figure comparable: the request
reaches an instance whole (method, path, query, body), hop-by-hop headers are dropped, the answer comes back
whole with its status and headers, on a kept-alive client connection, over both backends in turn."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator

import httptools
import pytest

from tests.support.backend import BackendProcess, running_backends
from tests.support.procs import PY, free_port, python_env, running


@pytest.fixture
def backends() -> Iterator[list[BackendProcess]]:
    with running_backends("a", "b") as started:
        yield started


def _proxy(backends: list[BackendProcess]) -> tuple[list[str], dict[str, str], int]:
    port = free_port()
    upstreams = ",".join(f"127.0.0.1:{b.port}" for b in backends)
    argv = [PY, "-m", "bench.peers.callback_proxy", "--port", str(port)]
    return argv, python_env(BENCH_UPSTREAMS=upstreams), port


def test_requests_reach_both_backends_whole_and_answers_come_back_on_one_connection(
    backends: list[BackendProcess],
) -> None:
    argv, env, port = _proxy(backends)
    body = bytes(range(256)) * 4
    with running(argv, port=port, env=env):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        seen = []
        for i in range(4):
            headers = {"Connection": "keep-alive", "X-Probe": str(i), "TE": "trailers"}
            conn.request("POST", f"/svc/items?n={i}", body=body, headers=headers)
            resp = conn.getresponse()
            answer = json.loads(resp.read())
            assert resp.status == 200
            assert resp.getheader("x-backend-instance") == answer["instance"]
            assert (answer["method"], answer["raw_path"], answer["query"]) == ("POST", "/svc/items", f"n={i}")
            assert answer["body_len"] == len(body)
            sent = dict(answer["headers"])
            assert sent["x-probe"] == str(i)
            assert sent["x-forwarded-for"] == "127.0.0.1"
            assert "te" not in sent  # hop-by-hop: not forwarded
            seen.append(answer["instance"])
        conn.close()
    assert sorted(seen[:2]) == ["a", "b"]  # round robin
    assert seen[:2] == seen[2:]


def test_pipelined_requests_are_answered_in_order() -> None:
    with running_backends("a") as (backend,):
        argv, env, port = _proxy([backend])
        with running(argv, port=port, env=env), socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"".join(b"GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(3)))
            answers = _Answers()
            parser = httptools.HttpResponseParser(answers)
            while len(answers.bodies) < 3:
                data = sock.recv(65536)
                assert data, "the proxy closed the connection"
                parser.feed_data(data)
    assert [json.loads(b)["path"] for b in answers.bodies] == ["/p0", "/p1", "/p2"]


class _Answers:
    """httptools callbacks collecting each response's body."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.body = b""

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.bodies.append(self.body)
        self.body = b""


def test_a_status_without_a_body_and_an_unreachable_backend_are_answered() -> None:
    with running_backends("a") as (backend,):
        argv, env, port = _proxy([backend])
        with running(argv, port=port, env=env):
            backend.control(health=503)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/health")
            resp = conn.getresponse()
            assert (resp.status, resp.reason) == (503, "Service Unavailable")
            assert json.loads(resp.read())["status"] == "unhealthy"
            backend.kill()  # the kept-alive upstream connection closes; a new one is refused
            conn.request("GET", "/after")
            resp = conn.getresponse()
            assert resp.status == 502
            assert resp.read() == b""
