"""Swaps rebuild only what changed, in slices, and summarise themselves in one small log line."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from msa_gateway import runtime as runtime_module
from msa_gateway.model import Discovered, Instance
from msa_gateway.runtime import Runtime
from msa_gateway.settings import Settings, parse_config

NO_PROBES = {"defaults": {"health_check": {"path": None}}}


def registry(services: int, per_service: int, port_base: int = 20000) -> dict[str, tuple[Instance, ...]]:
    return {
        f"svc-{s:03d}": tuple(
            Instance(id=f"i{i}", host="127.0.0.1", port=port_base + s * per_service + i)
            for i in range(per_service)
        )
        for s in range(services)
    }


@pytest.fixture
async def rt() -> AsyncIterator[Runtime]:
    runtime = Runtime(Settings(_env_file=None), parse_config(NO_PROBES, "test.yaml"))  # type: ignore[call-arg]
    yield runtime
    await runtime.aclose()


def with_added(discovered: Discovered, service: str, port: int) -> dict[str, tuple[Instance, ...]]:
    out = dict(discovered)
    out[service] = (*out[service], Instance(id=f"new{port}", host="127.0.0.1", port=port))
    return out


def test_one_added_instance_rebuilds_only_its_service(rt: Runtime) -> None:
    first = registry(50, 20)
    rt.apply(first)
    before = rt.snapshot
    rt.apply(with_added(first, "svc-007", 9))
    after = rt.snapshot
    assert after.version == before.version + 1
    assert after.instance_count == 1001
    assert after.services["svc-007"] is not before.services["svc-007"]
    assert [s for s in after.services if after.services[s] is before.services[s]] == [
        s for s in first if s != "svc-007"
    ], "every other service keeps its route object"
    assert "svc-007/new9@127.0.0.1:9" in rt.instances_of("svc-007")
    assert after.seen.get("svc-007/new9@127.0.0.1:9") == after.created
    assert after.seen.get("svc-007/nope") is None


def test_a_set_that_changes_nothing_swaps_nothing(rt: Runtime) -> None:
    first = registry(10, 5)
    rt.apply(first)
    snapshot = rt.snapshot
    rt.apply(dict(first))  # a new mapping holding the same tuples
    rt.apply(registry(10, 5))  # equal tuples, new objects
    assert rt.snapshot is snapshot


def test_removed_services_and_instances_are_forgotten(rt: Runtime) -> None:
    first = registry(3, 2)
    rt.apply(first)
    rt.health.get("svc-001/i0@127.0.0.1:20002")  # the table knows it
    shrunk = {"svc-000": first["svc-000"], "svc-002": first["svc-002"][:1]}
    rt.apply(shrunk)
    assert set(rt.snapshot.services) == {"svc-000", "svc-002"}
    assert "svc-001" not in rt.guards
    assert rt.snapshot.instance_count == 3
    assert "svc-001/i0@127.0.0.1:20002" not in rt.health._states
    assert "127.0.0.1:20005" not in rt.addresses and rt.addresses["127.0.0.1:20000"] == 1


def test_the_log_line_counts_and_names_the_first_five(rt: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="msa_gateway.registry")
    rt.apply(registry(20, 50))
    record = next(r for r in caplog.records if r.getMessage() == "registry updated")
    assert record.added == {  # type: ignore[attr-defined]
        "count": 1000,
        "first": [f"svc-000/i{i}@127.0.0.1:{20000 + i}" for i in range(5)],
    }
    assert record.removed == {"count": 0, "first": []}  # type: ignore[attr-defined]
    assert record.services_changed == 20  # type: ignore[attr-defined]
    assert len(record.getMessage()) + len(str(record.__dict__)) < 4000


async def test_a_large_update_gives_the_loop_turns_and_is_ready_at_the_swap(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pause after every step: with the 2 ms slice, how many pauses an update makes depends on
    # how fast this machine builds 3,000 instances (a fast run made fewer than three).
    monkeypatch.setattr(runtime_module, "SLICE", 0.0)
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    swapped_while_updating: list[bool] = []
    await rt.update(registry(100, 30), lambda: swapped_while_updating.append(rt.updating))
    stop.set()
    await task
    assert rt.snapshot.instance_count == 3000 and not rt.updating
    assert swapped_while_updating == [True], "ready once swapped, before the follow-up ended"
    assert ticks >= 3, "the update paused between slices"


async def test_a_synchronous_apply_finishes_an_update_in_progress_first(rt: Runtime) -> None:
    first, second = registry(100, 30), registry(100, 30, port_base=30000)
    update = asyncio.create_task(rt.update(first))
    while not rt.updating:
        await asyncio.sleep(0)
    rt.apply(second)  # e.g. a config reload while a large update runs
    await update
    ports = {i.port for r in rt.snapshot.services.values() for i in r.instances}
    assert min(ports) >= 30000 and rt.snapshot.instance_count == 3000
    assert not rt.updating
