"""``make run``'s launcher end to end: the README's curl examples work verbatim against it.

Starts ``python -m examples.run_demo`` (the four demo instances on 8001/8002/8011/8012 and the
gateway) and sends each curl example of the README with the same method, headers and body.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.support.procs import PY, REPO, free_port, python_env, wait_port


@pytest.fixture(scope="module")
def demo() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [PY, "-m", "examples.run_demo"],
        cwd=REPO,
        env=python_env(HOST="127.0.0.1", PORT=str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port, timeout=40, proc=proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:  # ready once the registry loaded and every instance passed a probe
            try:
                with urllib.request.urlopen(f"{url}/health/", timeout=2) as r:
                    doc = json.loads(r.read())
                if doc["status"] == "healthy":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the demo never turned healthy"
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out.decode(errors="replace")[-2000:]


def _call(url: str, method: str = "GET", body: dict[str, object] | None = None) -> tuple[int, bytes, str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.read(), r.headers.get("Content-Type", "")


def test_user_service_examples(demo: str) -> None:
    status, body, _ = _call(f"{demo}/user-service/users")
    assert status == 200
    assert isinstance(json.loads(body)["users"], list)
    status, body, _ = _call(
        f"{demo}/user-service/users", "POST", {"name": "John Doe", "email": "john@example.com"}
    )
    assert status == 201
    created = json.loads(body)
    assert created["name"] == "John Doe" and created["email"] == "john@example.com"
    instances = {json.loads(_call(f"{demo}/user-service/users")[1])["instance"] for _ in range(4)}
    assert instances == {"user-service-1", "user-service-2"}  # round robin over both instances


def test_order_service_examples(demo: str) -> None:
    status, _, _ = _call(f"{demo}/order-service/orders")
    assert status == 200
    status, body, _ = _call(
        f"{demo}/order-service/orders", "POST", {"user_id": 1, "product": "Laptop", "quantity": 1}
    )
    assert status == 201
    assert json.loads(body)["product"] == "Laptop"


def test_gateway_endpoint_examples(demo: str) -> None:
    status, body, _ = _call(f"{demo}/services")
    assert status == 200
    assert set(json.loads(body)["services"]) == {"user-service", "order-service"}
    status, body, _ = _call(f"{demo}/services/user-service/health")
    assert status == 200 and json.loads(body)["status"] == "healthy"
    status, body, _ = _call(f"{demo}/health/")
    assert status == 200 and json.loads(body)["status"] == "healthy"
    status, body, ctype = _call(f"{demo}/metrics/")
    assert status == 200 and ctype.startswith("text/plain")
    assert b'gateway_requests_total{code="200",method="GET",service="user-service"}' in body
