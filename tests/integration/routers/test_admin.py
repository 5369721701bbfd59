"""Admin endpoints on a bare FastAPI app served by uvicorn, writing into a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import uvicorn
from fastapi import FastAPI
from redis.asyncio import Redis

from msa_gateway.discovery.base import Registrar
from msa_gateway.discovery.redis import RedisProvider
from msa_gateway.discovery.redis_registry import RedisRegistrar, connect, expiry_key
from msa_gateway.model import Instance
from msa_gateway.routers.admin import router
from msa_gateway.settings import Settings
from tests.support.procs import free_port
from tests.support.redis_server import RedisServer, redis_server_fixture  # noqa: F401

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class FakeRuntime:
    """What the admin router needs from the runtime."""

    registrar: Registrar | None


@dataclass
class Gateway:
    base: str
    session: aiohttp.ClientSession
    provider: RedisProvider

    async def call(
        self,
        method: str,
        path: str,
        json: Any = None,
        headers: dict[str, str] | None = None,
        data: Any = None,
    ) -> tuple[int, dict[str, str], Any]:
        async with self.session.request(
            method, self.base + path, json=json, data=data, headers=headers
        ) as resp:
            body = await resp.read()
            parsed = await resp.json(content_type=None) if body else None
            return resp.status, dict(resp.headers), parsed


GatewayFactory = Callable[..., contextlib.AbstractAsyncContextManager[Gateway]]


@pytest.fixture
def gateway(redis_server: RedisServer) -> GatewayFactory:
    @contextlib.asynccontextmanager
    async def start(token: str | None = TOKEN, with_registrar: bool = True) -> AsyncIterator[Gateway]:
        settings: Settings = redis_server.settings(
            gateway_admin_token=token, service_discovery_type="redis" if with_registrar else "consul"
        )
        registrar = RedisRegistrar.from_settings(settings) if with_registrar else None
        provider = RedisProvider(connect(settings))
        app = FastAPI()
        app.include_router(router)
        app.state.settings = settings
        app.state.runtime = FakeRuntime(registrar)
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
        )
        task = asyncio.create_task(server.serve(), name="test-admin-uvicorn")
        try:
            while not server.started:
                assert not task.done(), "uvicorn stopped before it started"
                await asyncio.sleep(0.01)
            async with aiohttp.ClientSession() as session:
                yield Gateway(f"http://127.0.0.1:{port}", session, provider)
        finally:
            server.should_exit = True
            await task
            await provider.aclose()
            if registrar is not None:
                await registrar.aclose()

    return start


async def test_post_registers_and_delete_removes(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        body = {
            "host": "127.0.0.1",
            "port": 9100,
            "id": "u1",
            "weight": 4,
            "ttl": 30,
            "metadata": {"zone": "a"},
            "health_path": "/health",
        }
        status, _, doc = await gw.call("POST", "/services/users/instances", json=body, headers=AUTH)
        assert status == 201
        assert doc == {"service": "users", **body}
        assert (await gw.provider.read())["users"] == (
            Instance(
                id="u1",
                host="127.0.0.1",
                port=9100,
                weight=4,
                health_path="/health",
                metadata=(("zone", "a"),),
                source="redis",
            ),
        )
        status, _, doc = await gw.call("DELETE", "/services/users/instances/u1", headers=AUTH)
        assert (status, doc) == (204, None)
        assert "users" not in await gw.provider.read()
        status, _, doc = await gw.call(
            "DELETE", "/services/users/instances/u1", headers={**AUTH, "x-request-id": "rid-7"}
        )
        assert status == 404
        assert doc == {
            "error": "instance_not_found",
            "detail": "users/u1 is not registered",
            "request_id": "rid-7",
        }


async def test_post_defaults_id_to_host_port_and_never_expires_without_ttl(
    gateway: GatewayFactory, redis_server: RedisServer
) -> None:
    async with gateway() as gw:
        status, _, doc = await gw.call(
            "POST", "/services/orders/instances", json={"host": "::1", "port": 80}, headers=AUTH
        )
        assert status == 201
        assert (doc["id"], doc["weight"], doc["ttl"], doc["metadata"]) == ("[::1]:80", 1, None, {})
        async with Redis(port=redis_server.port) as raw:
            assert await raw.zscore(expiry_key("msa-gateway", "orders"), "[::1]:80") == math.inf
        status, _, _ = await gw.call("DELETE", "/services/orders/instances/%5B::1%5D:80", headers=AUTH)
        assert status == 204


async def test_endpoints_are_off_without_a_token(gateway: GatewayFactory) -> None:
    async with gateway(token=None) as gw:
        status, _, doc = await gw.call(
            "POST", "/services/users/instances", json={"host": "h", "port": 1}, headers=AUTH
        )
        assert status == 404
        assert doc["error"] == "not_found" and len(doc["request_id"]) == 32  # a real id, not "-"
        status, _, _ = await gw.call("DELETE", "/services/users/instances/x", headers=AUTH)
        assert status == 404
        assert await gw.provider.read() == {}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}],
)
async def test_wrong_or_missing_token_is_401(gateway: GatewayFactory, headers: dict[str, str]) -> None:
    async with gateway() as gw:
        status, resp_headers, doc = await gw.call(
            "POST", "/services/users/instances", json={"host": "h", "port": 1}, headers=headers
        )
        assert status == 401
        assert resp_headers.get("www-authenticate", resp_headers.get("WWW-Authenticate")) == "Bearer"
        assert doc["error"] == "unauthorized"
        status, _, _ = await gw.call("DELETE", "/services/users/instances/x", headers=headers)
        assert status == 401
        assert await gw.provider.read() == {}


@pytest.mark.parametrize(
    ("path", "body", "detail"),
    [
        ("/services/health/instances", {"host": "h", "port": 1}, "gateway endpoint"),
        ("/services/a%20b/instances", {"host": "h", "port": 1}, "service names"),
        ("/services/users/instances", {"host": "h", "port": 70000}, "port"),
        ("/services/users/instances", {"host": "h", "port": "80"}, "port"),
        ("/services/users/instances", {"port": 80}, "host"),
        ("/services/users/instances", {"host": "h/x", "port": 80}, "not a bare host"),
        ("/services/users/instances", {"host": "h", "port": 80, "weight": 0}, "weight"),
        ("/services/users/instances", {"host": "h", "port": 80, "colour": "red"}, "unknown field"),
        ("/services/users/instances", {"host": "h", "port": 80, "id": "a b"}, "instance ids"),
        ("/services/users/instances", {"host": "h", "port": 80, "health_path": "x"}, "health_path"),
        ("/services/users/instances", {"host": "h", "port": 80, "ttl": 0}, "ttl"),
        ("/services/users/instances", "not json", "json"),
    ],
)
async def test_bad_input_is_400(gateway: GatewayFactory, path: str, body: Any, detail: str) -> None:
    async with gateway() as gw:
        kwargs: dict[str, Any] = {"data": body} if isinstance(body, str) else {"json": body}
        status, _, doc = await gw.call("POST", path, headers={**AUTH, "x-request-id": "r1"}, **kwargs)
        assert status == 400, doc
        assert doc["error"] == "bad_request" and doc["request_id"] == "r1"
        assert detail in doc["detail"].lower() or detail in doc["detail"], doc
        assert await gw.provider.read() == {}


async def test_provider_without_registrations_is_409(gateway: GatewayFactory) -> None:
    async with gateway(with_registrar=False) as gw:
        status, _, doc = await gw.call(
            "POST", "/services/users/instances", json={"host": "h", "port": 1}, headers=AUTH
        )
        assert status == 409
        assert doc["error"] == "registrations_not_supported"
        assert doc["detail"].startswith("SERVICE_DISCOVERY_TYPE=consul takes no registrations"), doc
        status, _, _ = await gw.call("DELETE", "/services/users/instances/x", headers=AUTH)
        assert status == 409


async def test_registry_down_is_503(gateway: GatewayFactory, redis_server: RedisServer) -> None:
    async with gateway() as gw:
        redis_server.stop()
        status, _, doc = await gw.call(
            "POST", "/services/users/instances", json={"host": "h", "port": 1}, headers=AUTH
        )
        assert status == 503
        assert doc["error"] == "registry_unavailable"
        status, _, _ = await gw.call("DELETE", "/services/users/instances/x", headers=AUTH)
        assert status == 503
