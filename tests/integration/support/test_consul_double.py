"""The Consul double answers as HashiCorp's HTTP API docs say (pages named in its docstring)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support.consul_double import AclPolicy, ConsulDouble, parse_go_duration
from tests.support.procs import free_port


@pytest.fixture
def consul() -> Iterator[ConsulDouble]:
    with ConsulDouble(other_datacenters=("dc2",)) as double:
        yield double


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get(http: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any, dict[str, str]]:
    async with http.get(url, **kw) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, body, dict(r.headers)


async def put(http: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, str]:
    async with http.put(url, **kw) as r:
        return r.status, await r.text()


def test_go_durations() -> None:
    assert parse_go_duration("10s") == 10
    assert parse_go_duration("5m") == 300
    assert parse_go_duration("1m30s") == 90
    assert parse_go_duration("1500ms") == 1.5
    assert parse_go_duration("0") == 0
    for bad in ("", "10", "s", "1x"):
        with pytest.raises(ValueError):
            parse_go_duration(bad)


async def test_catalog_services_shape(consul: ConsulDouble, http: aiohttp.ClientSession) -> None:
    consul.register("postgresql", "pg-1", port=5432, tags=["primary"])
    consul.register("postgresql", "pg-2", port=5432, tags=["secondary", "primary"])
    consul.register("redis", "redis-1", port=6379)
    status, body, headers = await get(http, consul.url + "/v1/catalog/services")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert body == {"consul": [], "postgresql": ["primary", "secondary"], "redis": []}
    assert int(headers["X-Consul-Index"]) >= 1
    assert headers["X-Consul-Default-Acl-Policy"] == "allow"


async def test_health_service_shape(consul: ConsulDouble, http: aiohttp.ClientSession) -> None:
    consul.register("redis", "redis", port=8000, tags=["primary"], meta={"redis_version": "4.0"})
    status, body, headers = await get(http, consul.url + "/v1/health/service/redis")
    assert status == 200 and int(headers["X-Consul-Index"]) >= 1
    [entry] = body
    assert set(entry) == {"Node", "Service", "Checks"}
    assert {"ID", "Node", "Address", "Datacenter", "TaggedAddresses", "Meta"} <= set(entry["Node"])
    assert entry["Node"]["Datacenter"] == "dc1"
    svc = entry["Service"]
    assert {k: svc[k] for k in ("ID", "Service", "Tags", "Address", "Meta", "Port")} == {
        "ID": "redis",
        "Service": "redis",
        "Tags": ["primary"],
        "Address": "",  # empty: the node's address applies
        "Meta": {"redis_version": "4.0"},
        "Port": 8000,
    }
    assert svc["Weights"] == {"Passing": 1, "Warning": 1}
    checks = {c["CheckID"]: c for c in entry["Checks"]}
    assert set(checks) == {"serfHealth", "service:redis"}
    assert checks["serfHealth"]["ServiceID"] == "" and checks["service:redis"]["ServiceName"] == "redis"
    assert {
        "Node",
        "CheckID",
        "Name",
        "Status",
        "Notes",
        "Output",
        "ServiceID",
        "ServiceName",
        "ServiceTags",
    } <= set(checks["service:redis"])


async def test_passing_filter_drops_warning_critical_and_failed_nodes(
    consul: ConsulDouble, http: aiohttp.ClientSession
) -> None:
    consul.add_node("node2", "10.0.0.2")
    consul.register("web", "ok", port=1)
    consul.register("web", "warn", port=2, status="warning")
    consul.register("web", "crit", port=3, status="critical")
    consul.register("web", "on-bad-node", port=4, node="node2")
    consul.set_node_health("node2", "critical")
    _, everything, _ = await get(http, consul.url + "/v1/health/service/web")
    _, passing, _ = await get(http, consul.url + "/v1/health/service/web?passing")
    _, passing_true, _ = await get(http, consul.url + "/v1/health/service/web?passing=true")
    assert sorted(e["Service"]["ID"] for e in everything) == ["crit", "ok", "on-bad-node", "warn"]
    assert [e["Service"]["ID"] for e in passing] == ["ok"] == [e["Service"]["ID"] for e in passing_true]


async def test_dc_parameter(consul: ConsulDouble, http: aiohttp.ClientSession) -> None:
    consul.register("web", "in-dc2", port=1, dc="dc2")
    _, local, _ = await get(http, consul.url + "/v1/health/service/web")
    _, remote, _ = await get(http, consul.url + "/v1/health/service/web?dc=dc2")
    status, text, _ = await get(http, consul.url + "/v1/catalog/services?dc=nowhere")
    assert local == [] and [e["Service"]["ID"] for e in remote] == ["in-dc2"]
    assert remote[0]["Node"]["Datacenter"] == "dc2"
    assert (status, text) == (500, "No path to datacenter")


async def test_without_index_a_query_does_not_block(
    consul: ConsulDouble, http: aiohttp.ClientSession
) -> None:
    t0 = time.perf_counter()
    await get(http, consul.url + "/v1/catalog/services?wait=5s")
    assert time.perf_counter() - t0 < 1.0


async def test_blocking_query_times_out_within_wait_plus_jitter(
    consul: ConsulDouble, http: aiohttp.ClientSession
) -> None:
    _, _, headers = await get(http, consul.url + "/v1/health/service/web")
    index = headers["X-Consul-Index"]
    for _ in range(3):
        t0 = time.perf_counter()
        _, body, again = await get(http, consul.url + f"/v1/health/service/web?index={index}&wait=400ms")
        elapsed = time.perf_counter() - t0
        assert again["X-Consul-Index"] == index and body == []  # returned: no guarantee of a change
        assert 0.4 <= elapsed <= 0.4 + 0.4 / 16 + 0.15, elapsed


async def test_blocking_query_returns_on_change(consul: ConsulDouble, http: aiohttp.ClientSession) -> None:
    check = consul.register("web", "web-1", port=1)
    _, _, headers = await get(http, consul.url + "/v1/health/service/web")
    index = int(headers["X-Consul-Index"])

    async def later() -> None:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(consul.set_check, check, "critical")

    task = asyncio.create_task(later(), name="test-later")
    t0 = time.perf_counter()
    _, body, after = await get(http, consul.url + f"/v1/health/service/web?index={index}&wait=10s")
    await task
    assert 0.25 < time.perf_counter() - t0 < 2.0
    assert int(after["X-Consul-Index"]) > index and body[0]["Checks"][1]["Status"] == "critical"


async def test_unrelated_check_change_does_not_wake_another_service(
    consul: ConsulDouble, http: aiohttp.ClientSession
) -> None:
    consul.register("web", "web-1", port=1)
    other = consul.register("api", "api-1", port=2)
    _, _, headers = await get(http, consul.url + "/v1/health/service/web")
    index = headers["X-Consul-Index"]

    async def later() -> None:
        await asyncio.sleep(0.1)
        await asyncio.to_thread(consul.set_check, other, "critical")

    task = asyncio.create_task(later(), name="test-later")
    t0 = time.perf_counter()
    _, _, after = await get(http, consul.url + f"/v1/health/service/web?index={index}&wait=600ms")
    await task
    assert time.perf_counter() - t0 >= 0.6 and after["X-Consul-Index"] == index


async def test_bad_wait_and_index_are_400(consul: ConsulDouble, http: aiohttp.ClientSession) -> None:
    assert (await get(http, consul.url + "/v1/catalog/services?index=5&wait=soon"))[:2] == (
        400,
        "Invalid wait time",
    )
    assert (await get(http, consul.url + "/v1/catalog/services?index=x"))[:2] == (400, "Invalid index")


async def test_snapshot_restore_moves_the_index_back_and_wakes_queries(
    consul: ConsulDouble, http: aiohttp.ClientSession
) -> None:
    consul.register("web", "web-1", port=1)
    _, _, headers = await get(http, consul.url + "/v1/health/service/web")
    index = int(headers["X-Consul-Index"])

    async def later() -> None:
        await asyncio.sleep(0.2)
        await asyncio.to_thread(consul.restore_snapshot, 3)

    task = asyncio.create_task(later(), name="test-later")
    t0 = time.perf_counter()
    _, _, after = await get(http, consul.url + f"/v1/health/service/web?index={index}&wait=10s")
    await task
    assert time.perf_counter() - t0 < 2.0
    assert int(after["X-Consul-Index"]) == 3 < index


async def test_zero_index_mode(consul: ConsulDouble, http: aiohttp.ClientSession) -> None:
    consul.report_zero_index(True)
    _, _, headers = await get(http, consul.url + "/v1/catalog/services")
    assert headers["X-Consul-Index"] == "0"


async def test_acl_tokens(http: aiohttp.ClientSession) -> None:
    tokens = {"reader": AclPolicy(service_read=True, service_write=False), "writer": AclPolicy()}
    with ConsulDouble(acl_tokens=tokens) as consul:
        consul.register("web", "web-1", port=1)
        url = consul.url + "/v1/health/service/web"
        status, body, headers = await get(http, url)  # anonymous, default deny: filtered, not refused
        assert (status, body, headers["X-Consul-Default-Acl-Policy"]) == (200, [], "deny")
        assert "X-Consul-Results-Filtered-By-Acls" not in headers
        status, text, _ = await get(http, url, headers={"X-Consul-Token": "nope"})
        assert (status, text) == (403, "ACL not found")
        status, body, _ = await get(http, url, headers={"X-Consul-Token": "reader"})
        assert status == 200 and len(body) == 1
        status, body, _ = await get(http, url, headers={"Authorization": "Bearer reader"})
        assert status == 200 and len(body) == 1
        reg = consul.url + "/v1/agent/service/register"
        status, text = await put(
            http, reg, json={"Name": "api", "Port": 2}, headers={"X-Consul-Token": "reader"}
        )
        assert status == 403 and text.startswith("Permission denied") and "service:write" in text
        status, _ = await put(
            http, reg, json={"Name": "api", "Port": 2}, headers={"X-Consul-Token": "writer"}
        )
        assert status == 200


async def test_agent_register_defaults(consul: ConsulDouble, http: aiohttp.ClientSession) -> None:
    reg = consul.url + "/v1/agent/service/register"
    assert await put(http, reg, json={"Name": "web", "Port": 80, "Check": {"TTL": "10s"}}) == (200, "")
    check = consul.check("service:web")  # ID defaults to Name; check ID to service:<id>
    assert check is not None
    assert (check["Name"], check["Status"], check["ServiceID"]) == ("Service 'web' check", "critical", "web")
    body = {
        "ID": "web-2",
        "Name": "web",
        "Port": 81,
        "Checks": [{"TTL": "10s"}, {"TTL": "5s", "Status": "passing"}],
    }
    assert (await put(http, reg, json=body))[0] == 200
    assert consul.check_status("service:web-2:1") == "critical"
    assert consul.check_status("service:web-2:2") == "passing"
    snake = {
        "name": "api",
        "id": "api-1",
        "port": 90,
        "tags": ["x"],
        "check": {"ttl": "10s", "status": "warning"},
    }
    assert (await put(http, reg, json=snake))[0] == 200
    assert consul.check_status("service:api-1") == "warning"
    assert await put(http, reg, json={"Port": 1}) == (400, "Missing service name")
    assert (await put(http, reg, json={"Name": "x", "Check": {"HTTP": "http://a/"}}))[0] == 400
    assert (await get(http, reg))[0] == 405


async def test_agent_deregister(consul: ConsulDouble, http: aiohttp.ClientSession) -> None:
    reg = consul.url + "/v1/agent/service/register"
    await put(http, reg, json={"ID": "web-1", "Name": "web", "Port": 80, "Check": {"TTL": "10s"}})
    assert await put(http, consul.url + "/v1/agent/service/deregister/web-1") == (200, "")
    assert consul.instances("web") == [] and consul.check("service:web-1") is None
    assert await put(http, consul.url + "/v1/agent/service/deregister/unknown") == (200, "")


async def test_ttl_check_endpoints_and_expiry(consul: ConsulDouble, http: aiohttp.ClientSession) -> None:
    await put(
        http,
        consul.url + "/v1/agent/service/register",
        json={"Name": "web", "Port": 1, "Check": {"TTL": "1s"}},
    )
    base = consul.url + "/v1/agent/check/"
    assert await put(http, base + "pass/service:web?note=all+good") == (200, "")
    check = consul.check("service:web")
    assert check is not None and (check["Status"], check["Output"]) == ("passing", "all good")
    assert (await put(http, base + "warn/service:web"))[0] == 200
    assert consul.check_status("service:web") == "warning"
    assert (await put(http, base + "update/service:web", json={"Status": "critical", "Output": "x"}))[
        0
    ] == 200
    assert consul.check_status("service:web") == "critical"
    assert (await put(http, base + "fail/nope"))[0] == 404
    await put(http, base + "pass/service:web")
    deadline = time.monotonic() + 3
    while consul.check_status("service:web") != "critical":
        assert time.monotonic() < deadline, "TTL did not expire"
        await asyncio.sleep(0.05)
    expired = consul.check("service:web")
    assert expired is not None and expired["Output"] == "TTL expired"


async def test_http_check_statuses(consul: ConsulDouble, http: aiohttp.ClientSession) -> None:
    answer = {"status": 200}

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=answer["status"], text="state")

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        check = {"HTTP": f"http://127.0.0.1:{port}/health", "Interval": "100ms", "Timeout": "1s"}
        await put(
            http,
            consul.url + "/v1/agent/service/register",
            json={"Name": "web", "Port": port, "Check": check},
        )
        for code, expected in ((200, "passing"), (429, "warning"), (500, "critical"), (204, "passing")):
            answer["status"] = code
            deadline = time.monotonic() + 3
            while consul.check_status("service:web") != expected:
                assert time.monotonic() < deadline, f"{code} did not make the check {expected}"
                await asyncio.sleep(0.02)
    finally:
        await runner.cleanup()


async def test_go_down_refuses_and_come_back_keeps_data(
    consul: ConsulDouble, http: aiohttp.ClientSession
) -> None:
    consul.register("web", "web-1", port=1)
    consul.go_down()
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(http, consul.url + "/v1/catalog/services")
    consul.come_back()
    _, body, _ = await get(http, consul.url + "/v1/catalog/services")
    assert "web" in body


async def test_go_down_resets_blocked_queries(consul: ConsulDouble, http: aiohttp.ClientSession) -> None:
    _, _, headers = await get(http, consul.url + "/v1/catalog/services")

    async def later() -> None:
        await asyncio.sleep(0.2)
        await asyncio.to_thread(consul.go_down)

    task = asyncio.create_task(later(), name="test-later")
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(http, consul.url + f"/v1/catalog/services?index={headers['X-Consul-Index']}&wait=10s")
    await task


async def test_requests_are_recorded(consul: ConsulDouble, http: aiohttp.ClientSession) -> None:
    await get(http, consul.url + "/v1/catalog/services?dc=dc2", headers={"X-Consul-Token": "t"})
    [req] = consul.requests
    assert (req.method, req.path, dict(req.query), req.token) == (
        "GET",
        "/v1/catalog/services",
        {"dc": "dc2"},
        "t",
    )
