"""ADMIN_PORT: management endpoints on their own listener; read token; probe rounds rate-limited."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import aiohttp

from msa_gateway.settings import Settings
from tests.support.gateway import GatewayProcess, InProcessGateway, serve_gateway, service_yaml
from tests.support.procs import free_port, wait_port
from tests.support.recorder import Recorder, Reply

PUBLIC_OK = ["/", "/health/", "/health/live", "/health/ready", "/svc/a"]
MANAGEMENT = ["/services", "/services/svc/info", "/metrics", "/metrics/", "/docs", "/openapi.json"]


def settings(**kw: object) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[arg-type, call-arg]


@contextlib.asynccontextmanager
async def split_gateway(**kw: object) -> AsyncIterator[tuple[InProcessGateway, str, Recorder]]:
    """A gateway with a management listener; yields it, the management URL and the instance."""
    port = free_port()
    async with Recorder(Reply(200, body=b"ok")) as rec:
        async with serve_gateway(
            service_yaml({"svc": [rec.port]}), settings=settings(admin_port=port, **kw)
        ) as gw:
            yield gw, f"http://127.0.0.1:{port}", rec


async def status_of(client: aiohttp.ClientSession, url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with client.get(url, headers=headers) as r:
        await r.read()
        return r.status


async def test_public_port_keeps_proxy_and_probes_and_the_management_port_the_rest() -> None:
    async with split_gateway() as (gw, admin, _), aiohttp.ClientSession() as c:
        for path in PUBLIC_OK:
            assert await status_of(c, gw.url + path) == 200, path
        for path in [*MANAGEMENT, "/redoc"]:
            assert await status_of(c, gw.url + path) == 404, path
        for path in ["/", "/health/ready", *MANAGEMENT]:
            assert await status_of(c, admin + path) == 200, path
        assert await status_of(c, admin + "/svc/a") == 404  # no proxy on the management listener
        assert await status_of(c, admin + "/redoc") == 404  # off: /docs describes the same
        async with c.get(gw.url + "/health/") as r:
            assert "127.0.0.1:" not in await r.text()  # no instance address on the public port


async def test_read_token_guards_management_reads_on_either_layout() -> None:
    for split in (True, False):
        kw = {"admin_read_token": "reader", "gateway_admin_token": "writer"}
        async with contextlib.AsyncExitStack() as stack:
            if split:
                gw, admin, _ = await stack.enter_async_context(split_gateway(**kw))
            else:
                rec = await stack.enter_async_context(Recorder(Reply(200, body=b"ok")))
                gw = await stack.enter_async_context(
                    serve_gateway(service_yaml({"svc": [rec.port]}), settings=settings(**kw))
                )
                admin = gw.url
            c = await stack.enter_async_context(aiohttp.ClientSession())
            for path in MANAGEMENT:
                assert await status_of(c, admin + path) == 401, path
                assert await status_of(c, admin + path, "wrong") == 401, path
                assert await status_of(c, admin + path, "reader") == 200, path
                assert await status_of(c, admin + path, "writer") == 200, path
            assert await status_of(c, admin + "/health/ready") == 200  # probes stay open
            async with c.delete(
                admin + "/services/svc/instances/x", headers={"Authorization": "Bearer reader"}
            ) as r:
                assert r.status == 401  # the read token does not write


async def test_health_probe_rounds_are_shared_for_a_second() -> None:
    """Ten concurrent and five later calls within a second cost one probe per instance."""
    async with split_gateway() as (_, admin, rec), aiohttp.ClientSession() as c:
        url = admin + "/services/svc/health"

        async def checked_at() -> float:
            async with c.get(url) as r:
                assert r.status == 200
                doc = await r.json()
                assert doc["instances"][0]["status"] == "healthy"
                return float(doc["checked_at"])

        first = await asyncio.gather(*(checked_at() for _ in range(10)))
        assert len(set(first)) == 1 and len(rec.requests) == 1
        started = time.monotonic()
        while (now := await checked_at()) == first[0]:  # polled: served from the round, no probe
            assert time.monotonic() - started < 1.5, "the round never expired"
            await asyncio.sleep(0.05)
        assert now > first[0] and time.monotonic() - started >= 0.9  # PROBE_ROUND_TTL = 1 s
        assert len(rec.requests) == 2


def test_msa_gateway_run_serves_both_listeners_and_drains_on_sigterm() -> None:
    admin_port = free_port()
    with GatewayProcess(service_yaml({"svc": [1]}), ADMIN_PORT=str(admin_port)) as gw:
        wait_port(admin_port, timeout=20)

        def get(url: str) -> int:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    return int(r.status)
            except urllib.error.HTTPError as exc:
                return exc.code

        assert get(f"{gw.url}/health/live") == 200
        assert get(f"{gw.url}/metrics") == 404
        assert get(f"http://127.0.0.1:{admin_port}/metrics") == 200
        assert gw.terminate() == 0
        assert "management_listener_started" in gw.output()
