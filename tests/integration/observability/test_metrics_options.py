"""A real gateway's /metrics: idle services have no series, METRICS_PER_INSTANCE=false drops the per-instance gauge."""

from __future__ import annotations

import aiohttp

from msa_gateway.settings import Settings
from tests.support.gateway import serve_gateway, service_yaml
from tests.support.recorder import Recorder, Reply


async def scrape_after_one_request(settings: Settings, port: int) -> str:
    async with serve_gateway(service_yaml({"busy": [port], "idle": [port]}), settings=settings) as gw:
        async with aiohttp.ClientSession() as c:
            async with c.get(f"{gw.url}/busy/x") as r:
                assert r.status == 200
            async with c.get(f"{gw.url}/metrics") as r:
                return (await r.read()).decode()


async def test_only_the_service_with_traffic_has_request_series_and_both_have_instance_counts() -> None:
    async with Recorder(Reply(200, body=b"ok")) as rec:
        text = await scrape_after_one_request(Settings(_env_file=None), rec.port)  # type: ignore[call-arg]
        lean = Settings(_env_file=None, metrics_per_instance=False)  # type: ignore[call-arg]
        lean_text = await scrape_after_one_request(lean, rec.port)
    for body in (text, lean_text):
        assert 'gateway_request_duration_seconds_count{service="busy"} 1.0' in body
        assert 'service="idle"} 1.0' in body  # its instance gauges only
        assert 'gateway_request_duration_seconds_count{service="idle"}' not in body
        assert 'gateway_requests_total{code="200",method="GET",service="idle"}' not in body
        assert 'gateway_service_healthy_instances{service="idle"} 1.0' in body
        assert 'gateway_service_instances{service="busy"} 1.0' in body
    assert f'gateway_instance_up{{instance="127.0.0.1:{rec.port}",service="idle"}} 1.0' in text
    assert "gateway_instance_up" not in lean_text
