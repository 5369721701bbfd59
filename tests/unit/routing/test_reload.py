"""Hot reload in one process: a changed file swaps in, a bad one keeps the running config, in-flight requests keep theirs."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from msa_gateway.observability.access import AccessLog
from msa_gateway.proxy.handler import ProxyApp
from msa_gateway.runtime import Runtime
from msa_gateway.settings import Settings, load_config
from tests.support.fake_upstream import FakeUpstream, Hang, Reply, call

A = "127.0.0.1:9001"


def config(route_prefix: str, tag: str, **gateway: Any) -> dict[str, Any]:
    return {
        "gateway": gateway,
        "defaults": {"health_check": {"path": None}},
        "services": {
            "svc": {
                "instances": [{"host": "127.0.0.1", "port": 9001}],
                "policies": {"headers": {"response": {"set": {"X-Config": tag}}}},
            }
        },
        "routes": [{"service": "svc", "path_prefix": route_prefix, "strip_prefix": True}],
    }


def write(path: Path, data: dict[str, Any] | str) -> None:
    text = data if isinstance(data, str) else yaml.safe_dump(data)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # atomic, as editors and ConfigMaps do


def runtime(path: Path) -> tuple[Runtime, FakeUpstream]:
    upstream = FakeUpstream()
    rt = Runtime(
        Settings(_env_file=None),  # type: ignore[call-arg]
        load_config(str(path)),
        upstream=upstream,
        access=AccessLog(stream=io.StringIO()),
    )
    rt.reconfigure(rt.config)  # what discovery's first snapshot does: build the routing table
    return rt, upstream


def reloads(rt: Runtime, result: str) -> float:
    return rt.metrics.registry.get_sample_value("gateway_config_reloads_total", {"result": result}) or 0.0


async def test_a_changed_file_swaps_routes_and_policies_in(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    write(path, config("/old", "one"))
    rt, upstream = runtime(path)
    proxy = ProxyApp(rt)
    assert (await call(proxy, "GET", "/old/x")).headers[b"x-config"] == b"one"
    before = rt.snapshot.version
    write(path, config("/new", "two"))
    assert await rt.reloader.reload() == "ok"
    assert rt.snapshot.version == before + 1 and rt.config.digest == load_config(str(path)).digest
    answer = await call(proxy, "GET", "/new/x")
    assert answer.status == 200 and answer.headers[b"x-config"] == b"two"
    assert (await call(proxy, "GET", "/old/x")).status == 404
    assert await rt.reloader.reload() == "unchanged"
    assert (reloads(rt, "ok"), reloads(rt, "unchanged")) == (1, 1)
    moved = config("/new", "two")
    moved["services"]["svc"]["instances"][0]["port"] = 9002  # static instances reload with the file
    write(path, moved)
    assert await rt.reloader.reload() == "ok"
    await call(proxy, "GET", "/new/x")
    assert upstream.calls[-1].address == "127.0.0.1:9002"
    assert rt.reloader.summary()["hash"] == rt.config.digest


async def test_a_bad_file_keeps_the_running_config_and_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gw.yaml"
    write(path, config("/old", "one"))
    rt, _ = runtime(path)
    digest = rt.config.digest
    bad = config("/old", "one")
    bad["routes"].append({"service": "svc", "path_prefix": "/old/"})  # the same prefix twice
    write(path, bad)
    with caplog.at_level(logging.ERROR, logger="msa_gateway.config"):
        assert await rt.reloader.reload() == "error"
        assert await rt.reloader.reload() == "error"
    (record,) = [r for r in caplog.records if r.getMessage().startswith("config reload failed")]
    assert record.__dict__["file"] == str(path) and record.__dict__["key"] == "routes.1"
    assert "conflicts with routes.0" in record.__dict__["reason"]
    assert rt.config.digest == digest and reloads(rt, "error") == 2
    assert rt.reloader.summary()["last_error"] is not None
    assert (await call(ProxyApp(rt), "GET", "/old/x")).status == 200
    write(path, "routes: [")
    assert await rt.reloader.reload() == "error"
    assert rt.reloader.summary()["last_error"].startswith(f"{path}: line")


async def test_an_in_flight_request_finishes_on_the_config_it_started_with(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    write(path, config("/old", "one"))
    rt, upstream = runtime(path)
    hang = Hang(then=Reply(200))
    upstream.script(A, hang, Reply(200))
    proxy = ProxyApp(rt)
    pending = asyncio.create_task(call(proxy, "GET", "/old/x"))
    await asyncio.wait_for(hang.entered.wait(), 5)
    write(path, config("/new", "two"))
    assert await rt.reloader.reload() == "ok"
    hang.release.set()
    answer = await asyncio.wait_for(pending, 5)
    assert answer.status == 200 and answer.headers[b"x-config"] == b"one"
    assert (await call(proxy, "GET", "/new/x")).headers[b"x-config"] == b"two"


async def wait_digest(rt: Runtime, path: Path, timeout: float = 5.0) -> None:
    want = load_config(str(path)).digest
    deadline = time.monotonic() + timeout
    while rt.config.digest != want:
        assert time.monotonic() < deadline, "the new file was not loaded in time"
        await asyncio.sleep(0.01)


async def test_the_watch_task_sees_a_file_change_and_sighup_forces_a_check(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    write(path, config("/a", "one", reload_interval=0.05))
    rt, _ = runtime(path)
    rt.reloader.start()
    try:
        write(path, config("/b", "two", reload_interval=0))  # 0: from now on SIGHUP only
        await wait_digest(rt, path)
        await asyncio.sleep(0.2)  # several former poll intervals: with polling off, nothing may load
        write(path, config("/c", "three", reload_interval=0))
        assert rt.config.routes[0].prefix == b"/b"
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_digest(rt, path)
        assert rt.config.routes[0].prefix == b"/c"
    finally:
        rt.reloader.stop()
        await rt.tasks.aclose()


async def test_a_200_route_file_swaps_in_whole_and_records_its_swap_time(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    big = config("/r0", "one")
    big["routes"] = [
        {
            "service": "svc",
            "path_prefix": f"/r{i}",
            "strip_prefix": True,
            "policies": {"cors": {"allow_origins": ["https://a.test"]}},
        }
        for i in range(200)
    ]
    write(path, big)
    rt, _ = runtime(path)
    big["routes"][0]["path_prefix"] = "/changed"
    write(path, big)
    assert await rt.reloader.reload() == "ok"
    # ~2 ms on a quiet machine (bench.policies measures it); a bound here only catches a blow-up
    assert rt.reloader.last_swap_ms is not None and rt.reloader.last_swap_ms < 2000
    table = rt.snapshot.routes
    assert table is not None and len(table.routes) == 200
