"""The gateway's own endpoints answer JSON, are never shadowed by the proxy, and count traffic."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from msa_gateway.model import Discovered
from tests.support.gateway import serve_gateway, service_yaml
from tests.support.procs import find_binary
from tests.support.recorder import Recorder, Reply


async def _json(client: aiohttp.ClientSession, url: str, status: int = 200) -> dict:  # type: ignore[type-arg]
    async with client.get(url) as r:
        assert r.status == status, (url, r.status, await r.read())
        assert r.headers["Content-Type"].startswith("application/json")
        doc: dict = orjson.loads(await r.read())  # type: ignore[type-arg]
        return doc


async def test_root_health_and_services_endpoints() -> None:
    async with (
        Recorder(Reply(200, body=b"ok")) as rec,
        serve_gateway(service_yaml({"svc": [rec.port]})) as gw,
    ):
        async with aiohttp.ClientSession() as c:
            root = await _json(c, f"{gw.url}/")
            assert root["name"] == "msa-gateway" and root["services"] == 1 and root["discovery"] == "static"
            assert root["uptime_seconds"] >= 0 and root["version"]
            health = await _json(c, f"{gw.url}/health/")
            assert health["status"] == "healthy"
            assert health["services"]["svc"] == {
                "status": "healthy",
                "healthy_instances": 1,
                "total_instances": 1,
            }
            assert (await _json(c, f"{gw.url}/health"))["status"] == "healthy"
            assert (await _json(c, f"{gw.url}/health/live"))["status"] == "alive"
            assert (await _json(c, f"{gw.url}/health/ready"))["status"] == "ready"
            services = await _json(c, f"{gw.url}/services")
            inst = services["services"]["svc"]["instances"][0]
            assert (inst["host"], inst["port"], inst["weight"], inst["source"]) == (
                "127.0.0.1",
                rec.port,
                1,
                "static",
            )
            assert inst["last_seen"] is not None
            info = await _json(c, f"{gw.url}/services/svc/info")
            assert info["balancer"] == "round_robin"
            assert info["options"]["timeouts"] == {"connect": 2.0, "read": 30.0, "total": None}
            probe = await _json(c, f"{gw.url}/services/svc/health")
            assert probe["status"] == "healthy"
            assert probe["instances"][0]["http_status"] == 200 and probe["instances"][0]["latency_ms"] >= 0
            for path in ("/services/nope/info", "/services/nope/health", "/health/unknown"):
                doc = await _json(c, gw.url + path, status=404)
                assert set(doc) == {"error", "detail", "request_id"}


async def test_openapi_lists_only_gateway_endpoints() -> None:
    async with serve_gateway(service_yaml({"svc": [1]})) as gw, aiohttp.ClientSession() as c:
        spec = await _json(c, f"{gw.url}/openapi.json")
        assert set(spec["paths"]) == {
            "/",
            "/health/",
            "/health/live",
            "/health/ready",
            "/metrics/",
            "/services",
            "/services/{name}/health",
            "/services/{name}/info",
            "/services/{name}/instances",
            "/services/{name}/instances/{instance_id}",
        }
        async with c.get(f"{gw.url}/docs") as r:
            assert r.status == 200


async def test_service_cannot_shadow_gateway_endpoints() -> None:
    async with Recorder(Reply(200, body=b"proxied")) as rec:
        async with serve_gateway(service_yaml({"svc": [rec.port]})) as gw, aiohttp.ClientSession() as c:
            for path in ("/health/", "/metrics", "/services"):
                async with c.get(gw.url + path) as r:
                    assert await r.read() != b"proxied"
            assert rec.requests == []


async def test_metrics_count_traffic_with_bounded_labels() -> None:
    async with (
        Recorder(Reply(201, body=b"ok")) as rec,
        serve_gateway(service_yaml({"svc": [rec.port]})) as gw,
    ):
        async with aiohttp.ClientSession() as c:
            for _ in range(3):
                async with c.post(f"{gw.url}/svc/a?secret=1", data=b"x") as r:
                    assert r.status == 201
            for path in ("/nope/abc", "/other-random-path-123/x"):
                async with c.get(gw.url + path) as r:
                    assert r.status == 404
            async with c.request("PURGE", f"{gw.url}/svc/pot") as r:
                assert r.status == 201
            async with c.get(f"{gw.url}/metrics/") as r:
                assert r.headers["Content-Type"].startswith("text/plain")
                text = (await r.read()).decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
        }
        assert (
            samples[("gateway_requests_total", (("code", "201"), ("method", "POST"), ("service", "svc")))]
            == 3
        )
        assert (
            samples[("gateway_requests_total", (("code", "404"), ("method", "GET"), ("service", "unknown")))]
            == 2
        )
        assert (
            samples[("gateway_requests_total", (("code", "201"), ("method", "OTHER"), ("service", "svc")))]
            == 1
        )
        assert samples[("gateway_request_duration_seconds_count", (("service", "svc"),))] == 4
        assert samples[("gateway_requests_in_flight", ())] == 0
        assert ("gateway_instance_up", (("instance", f"127.0.0.1:{rec.port}"), ("service", "svc"))) in samples
        assert "abc" not in text and "secret" not in text and "random-path" not in text


async def test_upstream_errors_are_counted_by_kind() -> None:
    async with Recorder(Reply.resetting()) as rec, serve_gateway(service_yaml({"svc": [rec.port]})) as gw:
        async with aiohttp.ClientSession() as c:
            async with c.get(f"{gw.url}/svc/x") as r:
                assert r.status == 502
            async with c.get(f"{gw.url}/metrics") as r:
                text = (await r.read()).decode()
        # a GET is retried twice after a reset (retry_on_reset, max_retries 2): three failures, two retries
        assert 'gateway_upstream_errors_total{kind="reset",service="svc"} 3.0' in text
        assert 'gateway_retries_total{reason="reset",service="svc"} 2.0' in text
        assert len(rec.requests) == 3


class _NeverLoads:
    name = "never"

    async def watch(self) -> AsyncIterator[Discovered]:
        await asyncio.Event().wait()
        yield {}

    async def aclose(self) -> None:
        return None


async def test_ready_is_503_until_the_registry_loads() -> None:
    async with serve_gateway({}, provider=_NeverLoads()) as gw, aiohttp.ClientSession() as c:
        doc = await _json(c, f"{gw.url}/health/ready", status=503)
        assert doc["status"] == "not_ready" and "not loaded" in doc["reason"]
        assert (await _json(c, f"{gw.url}/health/live"))["status"] == "alive"


async def test_metrics_pass_promtool_check_metrics() -> None:
    """``promtool check metrics`` (Debian's prometheus package, installed by ``make deps``) accepts the output."""
    promtool = find_binary("promtool")
    config = service_yaml({"svc": [0]}, health_check={"path": "/health", "interval": 0.05})
    async with Recorder(Reply(200, body=b"ok")) as rec:
        config["services"]["svc"]["instances"][0]["port"] = rec.port
        async with serve_gateway(config) as gw, aiohttp.ClientSession() as c:
            for path in ("/svc/a", "/nope/x", "/svc/b"):
                async with c.get(gw.url + path) as r:
                    await r.read()
            async with c.get(f"{gw.url}/metrics") as r:
                text = await r.read()
    assert b"gateway_request_duration_seconds_bucket" in text
    result = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=text, capture_output=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == b"" and result.stderr.strip() == b""  # no lint findings either


async def test_gateway_endpoints_get_an_access_line_and_a_request_id() -> None:
    async with serve_gateway(service_yaml({"svc": [1]})) as gw, aiohttp.ClientSession() as c:
        async with c.get(f"{gw.url}/health/live", headers={"X-Request-ID": "probe-1"}) as r:
            assert r.headers["x-request-id"] == "probe-1"
        async with c.get(f"{gw.url}/services/nope/info") as r:
            body = orjson.loads(await r.read())
            assert (
                r.headers["x-request-id"] == body["request_id"]
            )  # one id per request, header and body agree
        await asyncio.sleep(0)
        lines = [orjson.loads(line) for line in gw.access_lines()]
    assert [(d["path"], d["status"], d["service"]) for d in lines] == [
        ("/health/live", 200, "-"),
        ("/services/nope/info", 404, "-"),
    ]
    assert lines[0]["request_id"] == "probe-1" and lines[1]["request_id"] == body["request_id"]
