"""ConsulRegistration against the Consul double, seen through ConsulProvider where it matters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from msa_gateway.discovery.consul import ConsulProvider
from msa_gateway.discovery.consul_registration import ConsulRegistration, HttpCheck, TtlCheck
from msa_gateway.errors import DiscoveryError
from msa_gateway.model import Discovered
from msa_gateway.settings import Settings
from tests.support.consul_double import AclPolicy, ConsulDouble
from tests.support.procs import free_port


@pytest.fixture
def consul() -> Iterator[ConsulDouble]:
    with ConsulDouble() as double:
        yield double


async def eventually(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        await asyncio.sleep(0.02)


async def snapshot_where(
    it: AsyncIterator[Discovered], pred: Callable[[Discovered], bool], timeout: float = 5.0
) -> Discovered:
    async def scan() -> Discovered:
        async for snap in it:
            if pred(snap):
                return snap
        raise AssertionError("watch ended")

    return await asyncio.wait_for(scan(), timeout)


def registration(consul: ConsulDouble, **kw: Any) -> ConsulRegistration:
    kw.setdefault("instance_id", "orders-1")
    kw.setdefault("address", "127.0.0.1")
    return ConsulRegistration("orders", kw.pop("port", 8001), consul_url=consul.url, **kw)


async def test_ttl_registration_stays_passing_and_deregisters_on_exit(consul: ConsulDouble) -> None:
    provider = ConsulProvider("127.0.0.1", consul.port, wait=30)
    it = provider.watch()
    try:
        await snapshot_where(it, lambda s: True)
        async with registration(
            consul, check=TtlCheck(ttl=0.6), tags=["v2"], meta={"health_path": "/hz"}
        ) as reg:
            snap = await snapshot_where(it, lambda s: "orders" in s)
            [inst] = snap["orders"]
            assert (inst.id, inst.port, inst.health_path) == ("orders-1", 8001, "/hz")
            assert ("tags", "v2") in inst.metadata
            await asyncio.sleep(1.5)  # 2.5 TTLs: only the heartbeat keeps it passing
            assert consul.check_status(reg.check_id) == "passing"
            task_names = {t.get_name() for t in asyncio.all_tasks()}
            assert "consul_ttl:orders-1" in task_names
        assert consul.instances("orders") == []
        await snapshot_where(it, lambda s: "orders" not in s)
        assert "consul_ttl:orders-1" not in {t.get_name() for t in asyncio.all_tasks()}
    finally:
        await it.aclose()  # type: ignore[attr-defined]


async def test_without_heartbeat_the_ttl_check_goes_critical(consul: ConsulDouble) -> None:
    reg = registration(consul, check=TtlCheck(ttl=0.5))
    async with reg:
        assert reg._heartbeat is not None
        reg._heartbeat.cancel()  # simulate a hung service: no more heartbeats
        await eventually(lambda: consul.check_status(reg.check_id) == "critical", what="TTL expiry")
        check = consul.check(reg.check_id)
        assert check is not None and check["Output"] == "TTL expired"


async def test_heartbeat_registers_again_when_the_agent_forgot(consul: ConsulDouble) -> None:
    async with registration(consul, check=TtlCheck(ttl=0.6)) as reg:
        consul.deregister("orders-1")  # the agent lost its state
        await eventually(lambda: consul.check_status(reg.check_id) == "passing", what="re-registration")
        assert [e["Service"]["ID"] for e in consul.instances("orders")] == ["orders-1"]


async def test_http_check_is_run_by_the_agent(consul: ConsulDouble) -> None:
    healthy = {"ok": True}

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=200 if healthy["ok"] else 503)

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    provider = ConsulProvider("127.0.0.1", consul.port, wait=30)
    it = provider.watch()
    try:
        check = HttpCheck(f"http://127.0.0.1:{port}/health", interval=0.1, timeout=1)
        async with registration(consul, port=port, check=check) as reg:
            payload_check = reg.payload()["Check"]
            assert payload_check["HTTP"].endswith("/health") and payload_check["Interval"] == "100ms"
            await snapshot_where(it, lambda s: [i.port for i in s.get("orders", ())] == [port])
            healthy["ok"] = False
            await snapshot_where(it, lambda s: s.get("orders") == ())
    finally:
        await it.aclose()  # type: ignore[attr-defined]
        await runner.cleanup()


async def test_register_payload_defaults() -> None:
    reg = ConsulRegistration("orders", 8001, check=TtlCheck(ttl=15, deregister_critical_after=600))
    body = reg.payload()
    assert body["Name"] == "orders" and body["Port"] == 8001 and body["ID"].startswith("orders-")
    assert body["Weights"] == {"Passing": 1, "Warning": 1}
    assert body["Check"] == {
        "TTL": "15s",
        "CheckID": reg.check_id,
        "Name": "Service 'orders' check",
        "DeregisterCriticalServiceAfter": "600s",
    }
    assert "Check" not in ConsulRegistration("orders", 8001).payload()
    with pytest.raises(ValueError):
        ConsulRegistration("orders", 0)


async def test_from_settings_uses_consul_settings() -> None:
    s = Settings(consul_host="127.0.0.1", consul_port=8600, consul_token="tok")
    reg = ConsulRegistration.from_settings(s, "orders", 8001)
    assert reg.consul_url == "http://127.0.0.1:8600"


async def test_token_is_sent_and_write_refusal_is_clear() -> None:
    tokens = {"writer": AclPolicy(), "reader": AclPolicy(service_write=False)}
    with ConsulDouble(acl_tokens=tokens) as consul:
        async with registration(consul, token="writer", check=TtlCheck(ttl=5)):
            assert consul.check_status("service:orders-1") == "passing"
        assert all(r.token == "writer" for r in consul.requests)
        with pytest.raises(DiscoveryError, match=r"Consul ACL token rejected \(403\).*Permission denied"):
            async with registration(consul, token="reader"):
                pass


async def test_unreachable_agent_is_a_discovery_error() -> None:
    with pytest.raises(DiscoveryError, match="unreachable"):
        async with ConsulRegistration("orders", 8001, consul_url=f"http://127.0.0.1:{free_port()}"):
            pass
