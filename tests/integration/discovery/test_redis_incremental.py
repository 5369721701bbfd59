"""The Redis provider reads only what changed: one service per event, nothing on an idle resync."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import pytest

from msa_gateway.discovery.redis import RedisProvider
from msa_gateway.discovery.redis_registry import RedisRegistrar, connect
from msa_gateway.discovery.redis_view import RedisView
from tests.integration.discovery.test_redis import Watcher, has, inst, lacks
from tests.support.redis_server import RedisServer, redis_server_fixture  # noqa: F401

SERVICES = 30


class CountingProvider(RedisProvider):
    """Remember the names of every read of whole services."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.reads: list[list[str]] = []

    async def read_names(self, view: RedisView, names: Iterable[str]) -> bool:
        names = list(names)
        if names:
            self.reads.append(names)
        return await super().read_names(view, names)


@pytest.fixture
async def registrar(redis_server: RedisServer) -> AsyncIterator[RedisRegistrar]:
    reg = RedisRegistrar.from_settings(redis_server.settings())
    for s in range(SERVICES):
        await asyncio.gather(
            *(reg.register(f"svc{s:02d}", inst(f"i{i}", 10000 + i), ttl=60) for i in range(5))
        )
    yield reg
    await reg.aclose()


@pytest.fixture
async def watched(
    redis_server: RedisServer, registrar: RedisRegistrar
) -> AsyncIterator[tuple[CountingProvider, Watcher]]:
    provider = CountingProvider(connect(redis_server.settings()), resync_interval=0.3)
    watcher = Watcher(provider)
    await watcher.wait_for(lambda s: len(s) == SERVICES)
    yield provider, watcher
    await watcher.close()
    await provider.aclose()


async def test_an_added_and_a_removed_instance_are_read_alone_and_share_the_rest(
    watched: tuple[CountingProvider, Watcher], registrar: RedisRegistrar
) -> None:
    provider, watcher = watched
    before = watcher.latest
    provider.reads.clear()
    await registrar.register("svc07", inst("new", 11000), ttl=60)
    await watcher.wait_for(has("svc07", "new"), timeout=1.0)
    after = watcher.latest
    assert provider.reads[0] == ["svc07"], "the event named one service and only it was read"
    assert [s for s in before if after[s] is not before[s]] == ["svc07"], "other services: the same tuples"
    provider.reads.clear()
    await registrar.deregister("svc07", "new")
    await watcher.wait_for(lacks("svc07", "new"), timeout=1.0)
    assert provider.reads[0] == ["svc07"]
    assert [s for s in after if watcher.latest[s] is not after[s]] == ["svc07"]


async def test_an_idle_resync_reads_no_service_whole_and_yields_nothing(
    watched: tuple[CountingProvider, Watcher],
) -> None:
    provider, watcher = watched
    provider.reads.clear()
    snapshots = len(watcher.snapshots)
    deadline = asyncio.get_running_loop().time() + 1.2  # four resync periods of 0.3 s
    while asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert len(watcher.snapshots) == snapshots, "nothing changed: no snapshot"
    assert provider.reads == [], "digests matched: no service read whole"


async def test_a_change_without_an_event_is_found_by_the_resync_digest(
    watched: tuple[CountingProvider, Watcher], redis_server: RedisServer
) -> None:
    provider, watcher = watched
    raw = connect(redis_server.settings())
    provider.reads.clear()
    try:  # a writer that skips the event: the instance JSON changes in place
        await raw.hset("msa-gateway:service:svc03:instances", "i0", '{"host": "127.0.0.1", "port": 12345}')
    finally:
        await raw.aclose()
    await watcher.wait_for(has("svc03", "i0", port=12345), timeout=2.0)
    assert provider.reads == [["svc03"]]
