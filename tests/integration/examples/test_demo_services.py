"""The demo services of ``make run`` as real processes: list, create, get, 404, health, instance name."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.procs import PY, REPO, free_port, python_env, running


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status and decoded JSON body."""

    status: int
    body: Any


def call(method: str, url: str, body: dict[str, Any] | None = None) -> Answer:
    """Send one request and return the status and JSON body, also for 4xx answers."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return Answer(resp.status, json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, json.loads(exc.read()))


@dataclass(frozen=True)
class Demo:
    """A running demo service: its base URL and the instance name it was given."""

    base: str
    instance: str


def start(module: str, instance: str) -> Iterator[Demo]:
    """Run ``examples.<module>`` on a free port for the duration of the fixture."""
    port = free_port()
    argv = [PY, "-m", f"examples.{module}", "--port", str(port), "--instance", instance]
    with running(argv, port=port):
        yield Demo(f"http://127.0.0.1:{port}", instance)


@pytest.fixture(scope="module")
def users() -> Iterator[Demo]:
    yield from start("user_service", "user-service-7")


@pytest.fixture(scope="module")
def orders() -> Iterator[Demo]:
    yield from start("order_service", "order-service-9")


# --- user-service ---------------------------------------------------------------------------


def test_user_list_returns_seeded_users_and_instance(users: Demo) -> None:
    got = call("GET", f"{users.base}/users")
    assert got.status == 200
    assert got.body["instance"] == "user-service-7"
    assert got.body["count"] == len(got.body["users"]) >= 1
    assert all({"id", "name", "email"} <= set(u) for u in got.body["users"])


def test_user_create_returns_201_with_new_id_then_get_and_list_show_it(users: Demo) -> None:
    before = call("GET", f"{users.base}/users").body["count"]
    created = call("POST", f"{users.base}/users", {"name": "John Doe", "email": "john@example.com"})
    assert created.status == 201
    assert created.body["name"] == "John Doe"
    assert created.body["email"] == "john@example.com"
    assert created.body["instance"] == "user-service-7"
    assert isinstance(created.body["id"], int)
    fetched = call("GET", f"{users.base}/users/{created.body['id']}")
    assert fetched == Answer(200, created.body)
    listing = call("GET", f"{users.base}/users").body
    assert listing["count"] == before + 1
    assert created.body["id"] in [u["id"] for u in listing["users"]]


def test_user_ids_increase(users: Demo) -> None:
    a = call("POST", f"{users.base}/users", {"name": "A", "email": "a@example.com"}).body["id"]
    b = call("POST", f"{users.base}/users", {"name": "B", "email": "b@example.com"}).body["id"]
    assert b == a + 1


def test_user_missing_is_404_json(users: Demo) -> None:
    got = call("GET", f"{users.base}/users/999999")
    assert got.status == 404
    assert got.body == {"error": "not_found", "detail": "user 999999 not found", "instance": "user-service-7"}


def test_user_put_replaces_and_delete_removes_then_both_404(users: Demo) -> None:
    created = call("POST", f"{users.base}/users", {"name": "Old", "email": "old@example.com"}).body
    url = f"{users.base}/users/{created['id']}"
    replaced = call("PUT", url, {"name": "New", "email": "new@example.com"})
    assert replaced == Answer(200, {**created, "name": "New", "email": "new@example.com"})
    assert call("DELETE", url) == Answer(200, replaced.body)
    assert call("GET", url).status == 404
    assert call("DELETE", url).status == 404
    assert call("PUT", url, {"name": "Again", "email": "a@example.com"}).status == 404
    after = call("POST", f"{users.base}/users", {"name": "Next", "email": "next@example.com"}).body
    assert after["id"] == created["id"] + 1  # a deleted id is not handed out again


def test_user_create_rejects_invalid_body_with_422(users: Demo) -> None:
    assert call("POST", f"{users.base}/users", {"name": "No Email"}).status == 422
    assert call("POST", f"{users.base}/users", {"name": "X", "email": "not-an-email"}).status == 422


def test_user_health(users: Demo) -> None:
    got = call("GET", f"{users.base}/health")
    assert got == Answer(200, {"status": "healthy", "service": "user-service", "instance": "user-service-7"})


# --- order-service --------------------------------------------------------------------------


def test_order_list_returns_seeded_orders_and_instance(orders: Demo) -> None:
    got = call("GET", f"{orders.base}/orders")
    assert got.status == 200
    assert got.body["instance"] == "order-service-9"
    assert got.body["count"] == len(got.body["orders"]) >= 1
    assert all({"id", "user_id", "items", "status"} <= set(o) for o in got.body["orders"])


def test_order_create_with_the_seeds_items_body_then_get_and_list_show_it(orders: Demo) -> None:
    before = call("GET", f"{orders.base}/orders").body["count"]
    created = call(
        "POST", f"{orders.base}/orders", {"user_id": 1, "items": [{"product_id": 1, "quantity": 2}]}
    )
    assert created.status == 201
    assert {k: created.body[k] for k in ("user_id", "items", "status", "instance")} == {
        "user_id": 1,
        "items": [{"product_id": 1, "product": None, "quantity": 2}],
        "status": "pending",
        "instance": "order-service-9",
    }
    fetched = call("GET", f"{orders.base}/orders/{created.body['id']}")
    assert fetched == Answer(200, created.body)
    listing = call("GET", f"{orders.base}/orders").body
    assert listing["count"] == before + 1


def test_order_create_with_several_items_by_id_or_name(orders: Demo) -> None:
    items = [
        {"product_id": 7, "quantity": 1},
        {"product": "Cable"},
        {"product_id": 3, "product": "Mouse", "quantity": 4},
    ]
    created = call("POST", f"{orders.base}/orders", {"user_id": 2, "items": items})
    assert created.status == 201
    assert created.body["items"] == [
        {"product_id": 7, "product": None, "quantity": 1},
        {"product_id": None, "product": "Cable", "quantity": 1},
        {"product_id": 3, "product": "Mouse", "quantity": 4},
    ]


def test_order_create_with_the_short_body_is_one_item(orders: Demo) -> None:
    created = call("POST", f"{orders.base}/orders", {"user_id": 1, "product": "Laptop", "quantity": 1})
    assert created.status == 201
    assert created.body["user_id"] == 1
    assert created.body["items"] == [{"product_id": None, "product": "Laptop", "quantity": 1}]
    short = call("POST", f"{orders.base}/orders", {"user_id": 1, "product": "Pen"})
    assert short.body["items"] == [{"product_id": None, "product": "Pen", "quantity": 1}]


def test_order_put_replaces_and_delete_removes(orders: Demo) -> None:
    created = call("POST", f"{orders.base}/orders", {"user_id": 1, "product": "Laptop"}).body
    url = f"{orders.base}/orders/{created['id']}"
    replaced = call("PUT", url, {"user_id": 3, "items": [{"product_id": 2, "quantity": 5}]})
    assert replaced == Answer(
        200, {**created, "user_id": 3, "items": [{"product_id": 2, "product": None, "quantity": 5}]}
    )
    assert call("DELETE", url) == Answer(200, replaced.body)
    assert call("GET", url).status == 404
    assert call("PUT", url, {"user_id": 3, "product": "X"}).status == 404


def test_order_missing_is_404_json(orders: Demo) -> None:
    got = call("GET", f"{orders.base}/orders/424242")
    assert got.status == 404
    assert got.body == {
        "error": "not_found",
        "detail": "order 424242 not found",
        "instance": "order-service-9",
    }


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"product": "No user"}, "user_id"),
        ({"user_id": 1, "product": "P", "quantity": 0}, "quantity"),
        ({"user_id": 1}, "either items or product"),
        ({"user_id": 1, "items": []}, "items"),
        ({"user_id": 1, "items": [{"quantity": 2}]}, "product_id or product"),
        ({"user_id": 1, "items": [{"product_id": 0}]}, "product_id"),
        ({"user_id": 1, "product": "P", "items": [{"product_id": 1}]}, "either items or product"),
        ({"user_id": 1, "quantity": 2, "items": [{"product_id": 1}]}, "quantity belongs in each item"),
    ],
)
def test_order_create_rejects_invalid_body_with_422_saying_why(
    orders: Demo, body: dict[str, Any], why: str
) -> None:
    got = call("POST", f"{orders.base}/orders", body)
    assert got.status == 422
    assert why in json.dumps(got.body)


def test_order_health(orders: Demo) -> None:
    got = call("GET", f"{orders.base}/health")
    assert got == Answer(
        200, {"status": "healthy", "service": "order-service", "instance": "order-service-9"}
    )


# --- start-up options -----------------------------------------------------------------------


def test_instance_name_from_env_and_port_from_env() -> None:
    port = free_port()
    env = python_env(INSTANCE_ID="from-env", PORT=str(port))
    with running([PY, "-m", "examples.user_service"], port=port, env=env):
        got = call("GET", f"http://127.0.0.1:{port}/health")
    assert got.body["instance"] == "from-env"


def test_instance_name_defaults_to_service_and_port() -> None:
    port = free_port()
    with running([PY, "-m", "examples.order_service", "--port", str(port)], port=port):
        got = call("GET", f"http://127.0.0.1:{port}/orders")
    assert got.body["instance"] == f"order-service-{port}"


def test_service_stops_on_sigterm_and_frees_its_port() -> None:
    port = free_port()
    with running([PY, "-m", "examples.user_service", "--port", str(port)], port=port) as proc:
        proc.terminate()
        # uvicorn re-raises the signal it caught once it has shut down
        assert proc.wait(10) in (0, -signal.SIGTERM)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


# --- run_demo refuses busy ports --------------------------------------------------------------


def test_run_demo_exits_nonzero_naming_a_busy_gateway_port() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        done = subprocess.run(
            [PY, "-m", "examples.run_demo"],
            cwd=REPO,
            env=python_env(HOST="127.0.0.1", PORT=str(port)),
            capture_output=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 1
    assert f"port {port} (gateway) is already in use" in done.stderr.decode()
    assert "Starting" not in done.stdout.decode()  # nothing was started
    assert time.monotonic() - started < 15
