"""/dashboard and /dashboard/events on the management listener: page, event format, rates, tokens, fan-out."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from msa_gateway.routers.dashboard import COOKIE, cookie_value
from msa_gateway.settings import Settings
from tests.support.backend import BackendProcess
from tests.support.gateway import GatewayProcess, InProcessGateway, serve_gateway, service_yaml
from tests.support.procs import free_port, wait_port
from tests.support.recorder import Recorder, Reply
from tests.support.sse import event_where, next_event


def settings(**kw: object) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[arg-type, call-arg]


@contextlib.asynccontextmanager
async def dashboard_gateway(**kw: object) -> AsyncIterator[tuple[InProcessGateway, str]]:
    """A gateway with a management listener, an ``ok`` service (200) and a ``bad`` one (500)."""
    port = free_port()
    async with Recorder(Reply(200, body=b"ok")) as ok, Recorder(Reply(500, body=b"no")) as bad:
        config = service_yaml({"ok": [ok.port], "bad": [bad.port]}, retry={"max_retries": 0})
        async with serve_gateway(config, settings=settings(admin_port=port, **kw)) as gw:
            yield gw, f"http://127.0.0.1:{port}"


def service(state: dict[str, Any], name: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = [s for s in state["services"] if s["name"] == name]
    (row,) = rows
    return row


def instances(state: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """Return the instances of service ``name`` as objects (the event sends arrays, see ``instance_fields``)."""
    return [
        dict(zip(state["instance_fields"], row, strict=True)) for row in service(state, name)["instances"]
    ]


async def wait_for(condition: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.02)


async def test_page_is_one_self_contained_html_document_on_the_management_listener_only() -> None:
    async with dashboard_gateway() as (gw, admin), aiohttp.ClientSession() as c:
        async with c.get(admin + "/dashboard") as r:
            html = await r.text()
            assert r.status == 200 and r.content_type == "text/html"
            csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp
        assert not re.search(r"(src|href)=", html)  # nothing loaded from anywhere: CSS and JS are inline
        assert "<table" in html and 'name="viewport"' in html
        async with c.get(admin + "/dashboard/") as r:
            assert r.status == 200
        async with c.get(gw.url + "/dashboard") as r:  # the public port: a service's path, none registered
            assert r.status == 404 and (await r.json())["error"] != "unauthorized"


async def test_without_admin_port_dashboard_stays_a_service_path() -> None:
    async with Recorder(Reply(200, body=b"from the service")) as rec:
        async with serve_gateway(service_yaml({"dashboard": [rec.port]})) as gw, aiohttp.ClientSession() as c:
            for path in ("/dashboard", "/dashboard/events"):
                async with c.get(gw.url + path) as r:
                    assert r.status == 200 and await r.read() == b"from the service"


async def test_events_are_server_sent_json_snapshots_one_per_tick() -> None:
    async with dashboard_gateway() as (gw, admin), aiohttp.ClientSession() as c:
        async with c.get(admin + "/dashboard/events") as r:
            assert r.status == 200 and r.content_type == "text/event-stream"
            assert r.headers["cache-control"] == "no-store"
            first = await next_event(r)
            assert first.fields == {"retry": "2000"}
            a, b = await next_event(r), await next_event(r)
        assert b.id == a.id + 1
        assert a.raw == b"id: %d\ndata: %s\n\n" % (a.id, a.fields["data"].encode())
        state = b.data
        assert set(state) == {
            "time",
            "interval",
            "instance_fields",
            "gateway",
            "discovery",
            "config",
            "services",
        }
        assert state["instance_fields"] == ["id", "address", "health", "ejected_for", "in_flight"]
        assert state["config"]["hash"] == gw.runtime.reloader.summary()["hash"]  # what /health/ shows
        assert state["discovery"] | {"last_success": None} == {
            "provider": "static",
            "up": True,
            "last_success": None,
            "last_error": None,
            "registry_version": gw.runtime.snapshot.version,
            "recovering": False,
        }
        ok = service(state, "ok")
        assert ok["healthy"] == ok["total"] == 1 and ok["panic"] is False
        (inst,) = instances(state, "ok")
        assert (
            inst["health"] in {"unknown", "healthy"}
            and inst["ejected_for"] is None
            and inst["in_flight"] == 0
        )


async def test_rates_move_with_traffic_and_show_errors() -> None:
    async with dashboard_gateway() as (gw, admin), aiohttp.ClientSession() as c:
        async with c.get(admin + "/dashboard/events") as stream:
            await next_event(stream)  # retry:
            assert (await next_event(stream)).data["services"][0]["rates"] is None  # the baseline

            async def traffic() -> None:
                while True:
                    for path in ("/ok/x", "/ok/y", "/ok/z", "/bad/x"):
                        async with c.get(gw.url + path) as r:
                            await r.read()

            sender = asyncio.create_task(traffic())
            try:
                moving = await event_where(
                    stream, lambda s: bool(service(s, "ok")["rates"] and service(s, "ok")["rates"]["rps"] > 0)
                )
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
        ok, bad = service(moving.data, "ok"), service(moving.data, "bad")
        assert ok["rates"]["error_ratio"] == 0 and ok["rates"]["p99_ms"] > 0
        assert bad["rates"]["error_ratio"] == 1.0
        assert ok["rates"]["rps"] == pytest.approx(3 * bad["rates"]["rps"], rel=0.5)


async def test_twenty_subscribers_share_one_producer_and_one_serialised_event() -> None:
    async with dashboard_gateway() as (gw, admin), aiohttp.ClientSession() as c:
        feed = gw.runtime.live
        async with contextlib.AsyncExitStack() as stack:
            streams = [await stack.enter_async_context(c.get(admin + "/dashboard/events")) for _ in range(20)]
            await wait_for(lambda: feed.subscribers == 20)
            target = feed.seq + 2
            seen = []
            for s in streams:
                seen.append(await event_where(s, lambda _: True))
                while seen[-1].id < target:
                    seen[-1] = await next_event(s)
            assert {e.raw for e in seen if e.id == target} and len(
                {e.raw for e in seen if e.id == target}
            ) == 1
            assert gw.runtime.tasks.kinds()["dashboard_feed"]["running"] == 1
        await wait_for(lambda: feed.subscribers == 0)  # closed streams unsubscribe
        await wait_for(lambda: feed.latest is None)  # and the producer stops ticking
        idle = feed.seq
        async with c.get(admin + "/health/") as r:
            assert (await r.json())["tasks"]["kinds"]["dashboard_feed"]["running"] == 1
        assert feed.seq == idle


async def test_a_draining_gateway_ends_open_streams_and_each_stream_gets_an_access_line() -> None:
    async with dashboard_gateway() as (gw, admin), aiohttp.ClientSession() as c:
        async with c.get(admin + "/dashboard/events") as r:
            await next_event(r)
            gw.runtime.draining = True
            with pytest.raises(EOFError):
                while True:
                    await next_event(r, timeout=5)
        gw.runtime.draining = False
        (line,) = [orjson.loads(x) for x in gw.access_lines() if '"/dashboard/events"' in x]
        assert line["status"] == 200 and line["bytes"] > 0  # one access line per stream, when it ends


TOKENS = {"admin_read_token": "reader-secret", "gateway_admin_token": "writer-secret"}


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/events"])
async def test_without_a_valid_token_both_answer_401_json(path: str) -> None:
    async with dashboard_gateway(**TOKENS) as (_, admin), aiohttp.ClientSession() as c:
        for params, headers in [
            ({}, {}),
            ({"token": "wrong"}, {}),
            ({"token": ""}, {}),
            ({}, {"Authorization": "Bearer wrong"}),
            ({}, {"Cookie": f"{COOKIE}=reader-secret"}),  # the cookie holds an HMAC, never the token itself
            ({}, {"Cookie": f"{COOKIE}={cookie_value('wrong')}"}),
        ]:
            async with c.get(admin + path, params=params, headers=headers) as r:
                body = orjson.loads(await r.read())
                assert r.status == 401, (params, headers)
                assert r.headers["www-authenticate"] == "Bearer"
                assert r.content_type == "application/json"
                assert body["error"] == "unauthorized" and "ADMIN_READ_TOKEN" in body["detail"]
                assert "set-cookie" not in r.headers
        good = {"Cookie": f"{COOKIE}={cookie_value('reader-secret')}"}
        async with c.get(admin + path, headers=good, params={"token": "wrong"}) as r:
            assert r.status == 401  # a wrong ?token= is refused even with a valid cookie
        async with c.get(admin + path, headers=good) as r:  # the right cookie alone passes
            assert r.status == 200


async def test_a_token_is_accepted_as_bearer_query_or_the_cookie_the_page_sets() -> None:
    async with dashboard_gateway(**TOKENS) as (_, admin), aiohttp.ClientSession() as c:
        for token in ("reader-secret", "writer-secret"):
            async with c.get(admin + "/dashboard", headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200 and "set-cookie" not in r.headers
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:  # IP hosts
            async with browser.get(admin + "/dashboard", params={"token": "reader-secret"}) as r:
                assert r.status == 200
                cookie = r.headers["set-cookie"]
            assert cookie.startswith(f"{COOKIE}={cookie_value('reader-secret')};")
            assert "reader-secret" not in cookie
            assert {"HttpOnly", "Path=/dashboard", "SameSite=strict"} <= {
                p.strip() for p in cookie.split(";")
            }
            async with browser.get(
                admin + "/dashboard/events"
            ) as r:  # the cookie alone, as EventSource sends
                assert r.status == 200 and (await next_event(r)).fields == {"retry": "2000"}
        async with c.get(admin + "/dashboard/events", params={"token": "writer-secret"}) as r:
            assert r.status == 200


async def test_under_workers_worker_0_serves_the_stream_and_says_so() -> None:
    admin = free_port()
    with BackendProcess("w") as backend:
        config = service_yaml({"svc": [backend.port]})
        with GatewayProcess(config, WORKERS="2", ADMIN_PORT=str(admin)) as gw:
            await asyncio.to_thread(wait_port, admin, proc=gw.proc)
            async with aiohttp.ClientSession() as c, c.get(f"http://127.0.0.1:{admin}/dashboard/events") as r:
                assert r.headers["x-gateway-worker"] == "0"
                state = (await event_where(r, lambda s: s["services"][0]["rates"] is not None)).data
        assert state["gateway"]["worker"] == 0  # the page shows "worker 0 (... this worker's share)"
        assert [s["name"] for s in state["services"]] == ["svc"]


async def test_an_ejected_instance_shows_ejected_and_for_how_long() -> None:
    admin, dead = free_port(), free_port()  # nothing listens on ``dead``: connect refused
    async with Recorder(Reply(200, body=b"ok")) as ok:
        config = service_yaml({"api": [dead, ok.port]}, outlier={"consecutive_failures": 1})
        async with (
            serve_gateway(config, settings=settings(admin_port=admin)) as gw,
            aiohttp.ClientSession() as c,
            c.get(f"http://127.0.0.1:{admin}/dashboard/events") as stream,
        ):
            await next_event(stream)
            for _ in range(2):  # round robin: one of the two goes to the dead instance
                async with c.get(f"{gw.url}/api/x") as r:
                    assert r.status == 200  # the refused attempt is retried on the other instance
            state = (
                await event_where(stream, lambda s: any(i["ejected_for"] for i in instances(s, "api")))
            ).data
    by_address = {i["address"]: i for i in instances(state, "api")}
    gone, alive = by_address[f"127.0.0.1:{dead}"], by_address[f"127.0.0.1:{ok.port}"]
    assert gone["ejected_for"] > 0
    assert alive["ejected_for"] is None
