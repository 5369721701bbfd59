"""A crash in each kind of background task is logged, restarted and shown in ``/health/``.

Each test injects one fault into a running component (the gateway runs in this process, so a
class attribute patched here is the one it calls) and watches the supervisor bring it back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from msa_gateway.discovery.aggregator import Aggregator
from msa_gateway.discovery.consul import _WatchRun
from msa_gateway.discovery.consul_registration import ConsulRegistration, TtlCheck
from msa_gateway.discovery.redis_registry import RedisRegistrar, ServiceRegistration
from msa_gateway.health.active import ActiveHealthChecker
from msa_gateway.model import Instance
from msa_gateway.settings import Settings
from msa_gateway.tasks import Supervisor
from tests.support.consul_double import ConsulDouble
from tests.support.gateway import serve_gateway, service_yaml
from tests.support.recorder import Recorder
from tests.support.redis_server import RedisServer, redis_server_fixture  # noqa: F401

FAULT = "RuntimeError('injected fault')"


class FailOnce:
    """Wrap ``original``: the ``nth`` call raises ``RuntimeError('injected fault')``; count every call."""

    def __init__(self, original: Callable[..., Any], nth: int = 1) -> None:
        self.original, self.nth, self.calls = original, nth, 0

    def _count(self) -> None:
        self.calls += 1
        if self.calls == self.nth:
            raise RuntimeError("injected fault")

    def sync(self) -> Callable[..., Any]:
        """Return a plain function (it binds like the method it replaces)."""

        def wrapper(*args: Any) -> Any:
            self._count()
            return self.original(*args)

        return wrapper

    def coro(self) -> Callable[..., Any]:
        """Return a plain coroutine function (it binds like the method it replaces)."""

        async def wrapper(*args: Any) -> Any:
            self._count()
            return await self.original(*args)

        return wrapper


def patch_once(monkeypatch: pytest.MonkeyPatch, owner: Any, attr: str, nth: int = 1) -> FailOnce:
    """Make the ``nth`` call of ``owner.attr`` (a method, sync or async) raise the injected fault."""
    original = getattr(owner, attr)
    fault = FailOnce(original, nth)
    wrapper = fault.coro() if asyncio.iscoroutinefunction(original) else fault.sync()
    monkeypatch.setattr(owner, attr, wrapper)
    return fault


def fail_task_once(monkeypatch: pytest.MonkeyPatch, kind: str) -> list[FailOnce]:
    """Make the first run of each task of ``kind`` that a ``Supervisor`` spawns raise the injected fault."""
    spawn = Supervisor.spawn
    faults: list[FailOnce] = []

    def spawn_failing(self: Supervisor, name: str, factory: Any, **kwargs: Any) -> Any:
        if name == kind:
            faults.append(FailOnce(factory))
            factory = faults[-1].coro()
        return spawn(self, name, factory, **kwargs)

    monkeypatch.setattr(Supervisor, "spawn", spawn_failing)
    return faults


async def get_ok(url: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        assert r.status == 200, await r.text()


def only_failing(health: dict[str, Any]) -> tuple[str, int, str]:
    """Return name, restarts and last error of the one task ``/health/`` lists as failing."""
    [failing] = health["tasks"]["failing"]
    return failing["name"], failing["restarts"], failing["last_error"]


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def health_of(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/health/") as r:
        assert r.status == 200
        doc: dict[str, Any] = orjson.loads(await r.read())
        return doc


async def metrics_of(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        return await r.text()


def crashes_logged(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [
        (r.__dict__["task"], r.__dict__["error"])
        for r in caplog.records
        if r.name == "msa_gateway.tasks" and r.getMessage() == "background task crashed"
    ]


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.ERROR, logger="msa_gateway.tasks"):
        yield caplog


async def test_a_crashed_probe_loop_is_restarted_and_shown(
    monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    fault = patch_once(monkeypatch, ActiveHealthChecker, "record", nth=2)
    async with Recorder() as rec:
        config = service_yaml({"svc": [rec.port]}, health_check={"path": "/health", "interval": 0.05})
        async with serve_gateway(config) as gw:
            await until(lambda: fault.calls >= 4)  # probing went on after the crash
            name = "health_probe"  # one scheduler task sends every probe
            health = await health_of(gw.url)
            text = await metrics_of(gw.url)
    tasks = health["tasks"]
    assert tasks["kinds"]["health_probe"]["running"] == 1
    assert tasks["kinds"]["health_probe"]["crashes"] == 1
    assert only_failing(health) == (name, 1, FAULT)
    assert tasks["failing"][0]["state"] == "running"
    assert health["status"] == "degraded"
    assert 'gateway_task_crashes_total{task="health_probe"} 1.0' in text
    assert crashes_logged(logs) == [(name, FAULT)]


async def test_a_crashed_discovery_task_is_restarted_and_loads(
    monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    fault = patch_once(monkeypatch, Aggregator, "run")
    async with Recorder() as rec, serve_gateway(service_yaml({"svc": [rec.port]})) as gw:
        await until(lambda: gw.runtime.ready)
        await get_ok(f"{gw.url}/svc/x")
        health = await health_of(gw.url)
    assert fault.calls == 2
    assert only_failing(health) == ("discovery:static", 1, FAULT)
    assert health["tasks"]["kinds"]["discovery"]["running"] == 1
    assert crashes_logged(logs) == [("discovery:static", FAULT)]


async def test_a_crashed_consul_watcher_fails_the_watch_which_is_restarted(
    monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    fault = patch_once(monkeypatch, _WatchRun, "_watch_service")
    with ConsulDouble() as consul:
        async with Recorder() as rec:
            consul.register("web", "web-1", port=rec.port, address="127.0.0.1")
            settings = Settings(  # type: ignore[call-arg]
                _env_file=None,
                service_discovery_type="consul",
                consul_host="127.0.0.1",
                consul_port=consul.port,
            )
            async with serve_gateway({}, settings=settings) as gw:
                runtime = gw.runtime
                await until(lambda: fault.calls >= 2 and runtime.aggregator.up)
                await get_ok(f"{gw.url}/web/x")
                health = await health_of(gw.url)
    kinds = health["tasks"]["kinds"]
    assert kinds["consul_service_watch"]["running"] == 1
    assert kinds["consul_service_watch"]["crashes"] == 1
    assert kinds["consul_service_watch"]["last_error"] == FAULT
    assert kinds["consul_catalog_watch"]["running"] == 1
    assert health["discovery"]["up"] is True
    assert runtime.aggregator.failures == 0  # it recovered
    assert crashes_logged(logs) == [("consul_service_watch:web", FAULT)]


async def test_a_crashed_idle_sweeper_is_restarted_and_shown(
    monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    faults = fail_task_once(monkeypatch, "upstream_idle_sweeper")  # the client is compiled: its task
    async with Recorder() as rec, serve_gateway(service_yaml({"svc": [rec.port]})) as gw:
        await get_ok(f"{gw.url}/svc/x")  # the first pool starts the sweeper
        await until(lambda: bool(faults) and faults[0].calls >= 2)  # it crashed, then started again
        health = await health_of(gw.url)
    assert only_failing(health) == ("upstream_idle_sweeper", 1, FAULT)
    assert crashes_logged(logs) == [("upstream_idle_sweeper", FAULT)]


async def test_a_crashed_redis_heartbeat_is_restarted(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    registrar = RedisRegistrar.from_settings(redis_server.settings())
    fault = patch_once(monkeypatch, registrar, "heartbeat")
    tasks = Supervisor()
    instance = Instance(id="u1", host="127.0.0.1", port=8001, source="redis")
    try:
        async with ServiceRegistration(registrar, "users", instance, ttl=0.3, tasks=tasks) as reg:
            await until(lambda: reg.heartbeats >= 2)
            assert fault.calls >= 3  # the first one crashed the task
            [info] = tasks.describe()
            assert (info.name, info.restarts, info.last_error) == ("redis_heartbeat:users/u1", 1, FAULT)
        assert tasks.describe() == []  # stopped on exit
    finally:
        await registrar.aclose()
    assert crashes_logged(logs) == [("redis_heartbeat:users/u1", FAULT)]


async def test_a_crashed_consul_ttl_heartbeat_is_restarted(
    monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    tasks = Supervisor()
    with ConsulDouble() as consul:
        reg = ConsulRegistration(
            "orders",
            8001,
            instance_id="orders-1",
            consul_url=consul.url,
            check=TtlCheck(ttl=0.3),
            tasks=tasks,
        )
        async with reg:
            fault = patch_once(monkeypatch, reg, "pass_ttl")
            await until(lambda: fault.calls >= 3)
            [info] = tasks.describe()
            assert (info.name, info.restarts, info.last_error) == ("consul_ttl:orders-1", 1, FAULT)
            assert consul.check_status("service:orders-1") == "passing"
        assert tasks.describe() == []
    assert crashes_logged(logs) == [("consul_ttl:orders-1", FAULT)]
