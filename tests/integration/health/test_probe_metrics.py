"""The probe scheduler in /metrics and /health/ of a running gateway."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.support.backend import running_backends
from tests.support.gateway import serve_gateway, service_yaml


async def metrics_text(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        return await r.text()


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_probes_lag_and_the_stretch_are_exported_and_one_task_sends_every_probe() -> None:
    with running_backends("a", "b") as (a, b):
        check = {"path": "/health", "interval": 0.1, "timeout": 1.0}
        async with serve_gateway(service_yaml({"svc": [a.port, b.port]}, health_check=check)) as gw:
            scheduler = gw.runtime.checker.scheduler
            deadline = time.monotonic() + 5.0
            while scheduler.results["ok"] < 6:
                assert time.monotonic() < deadline, "no probes went out"
                await asyncio.sleep(0.02)
            text = await metrics_text(gw.url)
            async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/health/") as r:
                health = await r.json()
    assert sample(text, 'gateway_health_probes_total{result="ok"}') >= 6
    assert sample(text, 'gateway_health_probes_total{result="failed"}') == 0
    assert sample(text, "gateway_health_probe_interval_stretch") == 1.0
    assert sample(text, "gateway_health_probe_cpu_seconds_total") > 0
    assert sample(text, "gateway_event_loop_lag_seconds_count") > 0
    assert sample(text, 'gateway_background_tasks{task="health_probe"}') == 1
    assert sample(text, 'gateway_background_tasks{task="loop_lag"}') == 1
    assert health["tasks"]["kinds"]["health_probe"]["running"] == 1
    assert health["services"]["svc"]["healthy_instances"] == 2
