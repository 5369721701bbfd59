"""``make run``'s launcher end to end: the original specification's curl examples work verbatim against it.

Starts ``python -m examples.run_demo`` (the four demo instances on 8001/8002/8011/8012 and the
gateway), runs every curl command of the seed (``../shared/seed``, parsed from the file) with the curl
binary and only the port changed, and sends one request to every endpoint the seed lists.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.procs import PY, REPO, free_port, python_env, wait_port
from tests.support.seed import CurlExample, curl_commands, listed_endpoints, seed_text


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


# --- the seed's curl examples, run with the curl binary --------------------------------------

USERS = {"user-service-1", "user-service-2"}
ORDERS = {"order-service-1", "order-service-2"}
SEED_CURLS = curl_commands(seed_text())


def _curl(example: CurlExample, base: str) -> tuple[int, str, bytes]:
    """Run the example's argv with only the port changed; append output options only, to read the status."""
    argv = [
        *example.against(base),
        "--silent",
        "--show-error",
        "--write-out",
        "\n%{http_code} %{content_type}",
    ]
    done = subprocess.run(argv, capture_output=True, timeout=20, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    body, _, trailer = done.stdout.rpartition(b"\n")
    code, _, ctype = trailer.decode().partition(" ")
    return int(code), ctype, body


def _users(doc: Any, example: CurlExample) -> None:
    assert doc["count"] == len(doc["users"]) >= 1 and doc["instance"] in USERS
    assert all({"id", "name", "email"} <= set(u) for u in doc["users"])


def _new_user(doc: Any, example: CurlExample) -> None:
    sent = json.loads(example.data or "")
    assert {k: doc[k] for k in ("name", "email")} == sent
    assert isinstance(doc["id"], int) and doc["instance"] in USERS


def _orders(doc: Any, example: CurlExample) -> None:
    assert doc["count"] == len(doc["orders"]) >= 2 and doc["instance"] in ORDERS
    assert all({"id", "user_id", "items", "status"} <= set(o) for o in doc["orders"])


def _new_order(doc: Any, example: CurlExample) -> None:
    sent = json.loads(example.data or "")
    assert doc["user_id"] == sent["user_id"] and doc["status"] == "pending"
    assert len(doc["items"]) == len(sent["items"])
    for got, asked in zip(doc["items"], sent["items"], strict=True):
        assert {k: got[k] for k in asked} == asked
    assert isinstance(doc["id"], int) and doc["instance"] in ORDERS


def _services(doc: Any, example: CurlExample) -> None:
    assert set(doc["services"]) == {"user-service", "order-service"}
    assert all(s["healthy_instances"] == s["total_instances"] == 2 for s in doc["services"].values())


def _service_health(doc: Any, example: CurlExample) -> None:
    assert doc["service"] == "user-service" and doc["status"] == "healthy"
    assert [i["status"] for i in doc["instances"]] == ["healthy", "healthy"]


def _gateway_health(doc: Any, example: CurlExample) -> None:
    assert doc["status"] == "healthy" and doc["ready"] is True
    assert set(doc["services"]) == {"user-service", "order-service"}


# (method, path) of every seed example -> its status and a check of its JSON body (None: Prometheus text)
EXPECTED: dict[tuple[str, str], tuple[int, Callable[[Any, CurlExample], None] | None]] = {
    ("GET", "/user-service/users"): (200, _users),
    ("POST", "/user-service/users"): (201, _new_user),
    ("GET", "/order-service/orders"): (200, _orders),
    ("POST", "/order-service/orders"): (201, _new_order),
    ("GET", "/services"): (200, _services),
    ("GET", "/services/user-service/health"): (200, _service_health),
    ("GET", "/health/"): (200, _gateway_health),
    ("GET", "/metrics/"): (200, None),
}


def test_every_seed_curl_example_has_an_expected_answer() -> None:
    assert len(SEED_CURLS) == 8
    assert {(c.method, c.path) for c in SEED_CURLS} == set(EXPECTED)


@pytest.mark.parametrize("example", SEED_CURLS, ids=[f"{c.method} {c.path}" for c in SEED_CURLS])
def test_seed_curl_example_works_verbatim(demo: str, example: CurlExample) -> None:
    status, check = EXPECTED[(example.method, example.path)]
    code, ctype, body = _curl(example, demo.replace("127.0.0.1", "localhost"))
    assert code == status, body[:500]
    if check is None:
        assert ctype.startswith("text/plain") and b"gateway_requests_total{" in body
    else:
        assert ctype == "application/json"
        check(json.loads(body), example)


# --- the endpoints the seed lists ------------------------------------------------------------

USER: dict[str, object] = {"name": "Jane Roe", "email": "jane@example.com"}
# a concrete request for each listed template: path, body, the key that identifies the answer
CONCRETE: dict[tuple[str, str], tuple[str, dict[str, object] | None, str]] = {
    ("GET", "/"): ("/", None, "name"),
    ("GET", "/health/"): ("/health/", None, "services"),
    ("GET", "/health/ready"): ("/health/ready", None, "registry_version"),
    ("GET", "/health/live"): ("/health/live", None, "status"),
    ("GET", "/metrics/"): ("/metrics/", None, ""),
    ("GET", "/services"): ("/services", None, "services"),
    ("GET", "/services/{service_name}/health"): ("/services/user-service/health", None, "instances"),
    ("GET", "/services/{service_name}/info"): ("/services/user-service/info", None, "balancer"),
    ("GET", "/{service_name}/{path}"): ("/user-service/users", None, "users"),
    ("POST", "/{service_name}/{path}"): ("/user-service/users", USER, "id"),
    ("PUT", "/{service_name}/{path}"): ("/user-service/users/1", USER, "id"),
    ("DELETE", "/{service_name}/{path}"): ("/user-service/users/2", None, "id"),
}
LISTED = listed_endpoints(seed_text())


def test_every_listed_endpoint_has_a_concrete_request() -> None:
    assert len(LISTED) == 12
    assert set(LISTED) == set(CONCRETE)


@pytest.mark.parametrize("endpoint", LISTED, ids=[f"{m} {p}" for m, p in LISTED])
def test_every_endpoint_the_seed_lists_answers_2xx(demo: str, endpoint: tuple[str, str]) -> None:
    path, body, key = CONCRETE[endpoint]
    status, raw, ctype = _call(f"{demo}{path}", endpoint[0], body)
    assert 200 <= status < 300
    if not key:
        assert ctype.startswith("text/plain") and b"# TYPE gateway_requests_total counter" in raw
        return
    doc = json.loads(raw)
    assert key in doc
    if body is not None:
        assert {k: doc[k] for k in body} == body


# --- the README's own examples ---------------------------------------------------------------


def test_requests_alternate_between_the_two_user_instances(demo: str) -> None:
    instances = {json.loads(_call(f"{demo}/user-service/users")[1])["instance"] for _ in range(4)}
    assert instances == USERS  # round robin over both instances


def test_the_short_order_body_is_accepted_too(demo: str) -> None:
    status, body, _ = _call(
        f"{demo}/order-service/orders", "POST", {"user_id": 1, "product": "Laptop", "quantity": 1}
    )
    assert status == 201
    assert json.loads(body)["items"] == [{"product_id": None, "product": "Laptop", "quantity": 1}]


def test_metrics_count_the_proxied_requests(demo: str) -> None:
    _call(f"{demo}/user-service/users")
    status, body, ctype = _call(f"{demo}/metrics/")
    assert status == 200 and ctype.startswith("text/plain")
    assert b'gateway_requests_total{code="200",method="GET",service="user-service"}' in body
