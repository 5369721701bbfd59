"""``rate_limit`` on a real ``redis-server``: exact across clients, NOSCRIPT, outages and recovery.

The limiters here are the ones the stage uses (``Limiter`` over ``RedisBackend``), each with its own
client as separate gateways would have; the last test runs three gateway processes on one Redis.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from msa_gateway.discovery.redis_registry import connect
from msa_gateway.errors import HTTPError, TooManyRequests
from msa_gateway.observability.metrics import Metrics
from msa_gateway.policies.gcra import Decision
from msa_gateway.policies.ratelimit import RateLimitStage, RedisRateLimitStage, redis_backend
from msa_gateway.policies.ratelimit_config import parse
from msa_gateway.policies.ratelimit_limiter import Limiter
from msa_gateway.policies.shared import SharedState
from tests.support.gateway import GatewayProcess, service_yaml
from tests.support.recorder import Recorder, Reply
from tests.support.redis_server import RedisServer, redis_server_fixture  # noqa: F401
from tests.support.requests import request
from tests.support.traffic import eventually

TIMEOUT = 0.2


class Gateway:
    """One gateway's view: its own shared store, Redis client and metrics."""

    def __init__(self, server: RedisServer) -> None:
        self.metrics = Metrics()
        self.shared = SharedState(settings=server.settings(), metrics=self.metrics)

    def limiter(self, **block: Any) -> Limiter:
        config = parse({"backend": "redis", "backend_timeout": TIMEOUT, **block})
        return Limiter(config, "svc", redis_backend(self.shared, TIMEOUT), time.monotonic, self.shared.tasks)

    def backend_up(self) -> float | None:
        return self.metrics.registry.get_sample_value("gateway_ratelimit_backend_up", {"backend": "redis"})


@pytest.fixture
async def gateways(redis_server: RedisServer) -> AsyncIterator[list[Gateway]]:
    made = [Gateway(redis_server) for _ in range(3)]
    yield made
    for gw in made:
        await gw.shared.aclose()


async def ask(stage: RateLimitStage) -> tuple[int, Any, int | None]:
    """Return (status, the RateLimit headers, Retry-After) of one request through ``stage``."""
    asked = request()
    try:
        await stage(asked)
    except TooManyRequests as exc:
        return 429, exc.headers, exc.retry_after
    except HTTPError as exc:
        return exc.status, None, None
    return 200, asked.rate_limit, None


async def decide_all(limiters: list[Limiter], key: str, n: int) -> list[tuple[Decision | None, str]]:
    return await asyncio.gather(*(limiters[i % len(limiters)].decide(key) for i in range(n)))


async def test_three_gateways_hammering_one_key_admit_exactly_the_limit(gateways: list[Gateway]) -> None:
    block = {"limits": [{"rate": "25/minute", "burst": 24}, "1000/hour"]}
    limiters = [gw.limiter(**block) for gw in gateways]
    results = await decide_all(limiters, "ip:203.0.113.7", 300)
    assert [r for _, r in results].count("allowed") == 25
    assert [r for _, r in results].count("limited") == 275
    refused = next(d for d, r in results if r == "limited")
    assert refused is not None and 2.0 < refused.retry_after <= 2.4  # one slot every 2.4 s


async def test_keys_share_one_hash_tag_and_expire_when_idle(gateways: list[Gateway]) -> None:
    limiter = gateways[0].limiter(name="per-ip", limits=["10/second", "100/hour"])
    await limiter.decide("ip:203.0.113.7")
    assert limiter.redis is not None
    redis = limiter.redis.client
    keys = sorted(await redis.keys("rl:*"))
    assert keys == [b"rl:{svc:per-ip:ip:203.0.113.7}:0", b"rl:{svc:per-ip:ip:203.0.113.7}:1"]
    ttls = [await redis.pttl(k) for k in keys]
    assert 100 < ttls[0] <= 200 and 60_000 < ttls[1] <= 72_000  # TAT + interval - now: 0.2 s and 72 s


async def test_a_flushed_script_is_loaded_again(gateways: list[Gateway]) -> None:
    limiter = gateways[0].limiter(limits=[{"rate": "2/minute", "burst": 1}])
    assert (await limiter.decide("k"))[1] == "allowed"
    assert limiter.redis is not None
    await limiter.redis.client.script_flush()
    assert (await limiter.decide("k"))[1] == "allowed"
    assert (await limiter.decide("k"))[1] == "limited"
    assert limiter.redis.up and gateways[0].backend_up() == 1


@pytest.mark.parametrize(
    ("mode", "results"),
    [
        ("allow", {"fail_open"}),
        ("deny", {"fail_closed"}),
        ("local", {"fallback_allowed", "fallback_limited"}),
    ],
)
async def test_redis_down_applies_the_mode_at_once_and_recovers_within_a_second(
    gateways: list[Gateway], redis_server: RedisServer, mode: str, results: set[str]
) -> None:
    gw = gateways[0]
    limiter = gw.limiter(on_backend_error=mode, limits=[{"rate": "5/minute", "burst": 4}])
    assert (await limiter.decide("k"))[1] == "allowed"
    redis_server.stop()
    started = time.perf_counter()
    outage = await decide_all([limiter], "k", 20)
    assert time.perf_counter() - started < 1.0  # nobody waits for the dead server
    assert {r for _, r in outage} == results
    if mode == "local":
        assert [r for _, r in outage].count("fallback_allowed") == 5  # the local bucket is fresh
    assert gw.backend_up() == 0 and limiter.redis is not None and not limiter.redis.up

    redis_server.start()
    back = time.perf_counter()

    async def decided_by_redis() -> bool:
        return (await limiter.decide("fresh"))[1] in {"allowed", "limited"}

    await eventually(decided_by_redis, timeout=5.0)
    assert time.perf_counter() - back < 1.0
    assert gw.backend_up() == 1
    again = await decide_all([limiter], "exact", 40)
    assert [r for _, r in again].count("allowed") == 5 and [r for _, r in again].count("limited") == 35


@pytest.fixture
async def upstream() -> AsyncIterator[Recorder]:
    async with Recorder(Reply(200, body=b"ok")) as rec:
        yield rec


@pytest.fixture
def processes(redis_server: RedisServer, upstream: Recorder) -> Iterator[list[GatewayProcess]]:
    port = int(upstream.url.rsplit(":", 1)[1])
    config = service_yaml({"svc": [port]})
    config["services"]["svc"]["policies"] = {
        "rate_limit": {
            "key": "route",
            "limits": [{"rate": "30/minute", "burst": 29}],
            "backend": "redis",
            "on_backend_error": "deny",
            "backend_timeout": TIMEOUT,
        }
    }
    env = {
        "SERVICE_DISCOVERY_TYPE": "static",
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(redis_server.port),
    }
    gws = [GatewayProcess(config, None, **env) for _ in range(3)]
    try:
        for gw in gws:
            gw.start(wait=False)
        for gw in gws:
            gw.start()  # already running: waits for its port
        yield gws
    finally:
        for gw in gws:
            gw.close()


async def statuses(session: aiohttp.ClientSession, gws: list[GatewayProcess], n: int) -> list[int]:
    async def one(i: int) -> int:
        async with session.get(f"{gws[i % len(gws)].url}/svc/x") as r:
            await r.read()
            return r.status

    return await asyncio.gather(*(one(i) for i in range(n)))


async def test_gateway_processes_share_the_limit_and_fail_closed_while_redis_is_down(
    processes: list[GatewayProcess], redis_server: RedisServer
) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        first = await statuses(session, processes, 90)
        assert first.count(200) == 30 and first.count(429) == 60
        redis_server.stop()
        started = time.perf_counter()
        outage = await statuses(session, processes, 30)
        assert set(outage) == {503} and time.perf_counter() - started < 1.0
        async with session.get(f"{processes[0].url}/metrics/") as r:
            assert 'gateway_ratelimit_backend_up{backend="redis"} 0.0' in await r.text()
        redis_server.start()
        back = time.perf_counter()

        async def decided_by_redis() -> bool:
            return set(await statuses(session, processes, 3)) <= {200, 429}

        await eventually(decided_by_redis, timeout=5.0)
        assert time.perf_counter() - back < 1.0


async def test_the_local_precheck_sends_its_counts_and_learns_the_others(gateways: list[Gateway]) -> None:
    block = {"limits": [{"rate": "10/minute", "burst": 9}], "sync_interval": 0.02}
    first, second = gateways[0].limiter(**block), gateways[1].limiter(**block)
    assert [r for _, r in await decide_all([first], "k", 20)].count("allowed") == 10  # decided locally

    def synced(limiter: Limiter) -> bool:
        return not limiter.syncing and not limiter.pending

    await eventually(lambda: synced(first), timeout=5.0)
    # The second gateway knows nothing yet: its first request passes (the documented overshoot)...
    assert (await second.decide("k"))[1] == "allowed"
    await eventually(lambda: synced(second), timeout=5.0)
    # ...and once synchronised it has the first gateway's count too.
    assert [r for _, r in await decide_all([second], "k", 5)] == ["limited"] * 5
    assert second.redis is not None
    tat = float(await second.redis.client.get("rl:{svc:default:k}:0") or 0)
    now_s, now_us = await second.redis.client.time()
    assert 11 * 6.0 - 1.0 < tat / 1e6 - (now_s + now_us / 1e6) <= 11 * 6.0  # 11 admitted, 6 s apart


async def test_a_redis_that_hangs_costs_a_request_at_most_the_timeout(
    gateways: list[Gateway], redis_server: RedisServer
) -> None:
    limiter = gateways[0].limiter(on_backend_error="allow", limits=["5/minute"])
    assert (await limiter.decide("k"))[1] == "allowed"
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)  # accepts nothing, answers nothing: a hung server
    try:
        started = time.perf_counter()
        assert [r for _, r in await decide_all([limiter], "k", 10)] == ["fail_open"] * 10
        assert time.perf_counter() - started < 2 * TIMEOUT + 0.3  # one timeout (two if the loop was late)
        started = time.perf_counter()
        assert (await limiter.decide("k"))[1] == "fail_open"  # down: no wait at all
        assert time.perf_counter() - started < 0.05
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)

    async def decided_by_redis() -> bool:
        return (await limiter.decide("k"))[1] in {"allowed", "limited"}

    assert await eventually(decided_by_redis, timeout=5.0) < 1.0


async def test_decisions_use_the_configured_password_and_database(redis_server: RedisServer) -> None:
    client = connect(redis_server.settings())
    await client.config_set("requirepass", "s3cret")
    try:
        shared = SharedState(settings=redis_server.settings(redis_password="s3cret", redis_db=3))
        config = parse({"backend": "redis", "backend_timeout": TIMEOUT, "limits": ["5/minute"]})
        limiter = Limiter(config, "svc", redis_backend(shared, TIMEOUT), time.monotonic, shared.tasks)
        assert (await limiter.decide("k"))[1] == "allowed"
        checker = connect(redis_server.settings(redis_password="s3cret", redis_db=3))
        assert await checker.exists("rl:{svc:default:k}:0") == 1
        zero = connect(redis_server.settings(redis_password="s3cret", redis_db=0))
        assert await zero.exists("rl:{svc:default:k}:0") == 0
        wrong = SharedState(settings=redis_server.settings(redis_password="wrong"))
        refused = Limiter(config, "svc", redis_backend(wrong, TIMEOUT), time.monotonic, wrong.tasks)
        assert (await refused.decide("k"))[1] == "fallback_allowed"  # AUTH refused: down, decided locally
        for c in (checker, zero):
            await c.aclose()
        await shared.aclose()
        await wrong.aclose()
    finally:
        await client.auth("s3cret")
        await client.config_set("requirepass", "")
        await client.aclose()


@pytest.mark.parametrize("mode", ["allow", "deny", "local"])
async def test_the_one_limit_redis_stage_answers_as_the_general_one_up_and_down(
    gateways: list[Gateway], redis_server: RedisServer, mode: str
) -> None:
    block = {"key": "route", "limits": [{"rate": "5/minute", "burst": 3}], "on_backend_error": mode}
    fused_limiter, general_limiter = gateways[0].limiter(**block), gateways[1].limiter(name="other", **block)
    fused = RedisRateLimitStage(fused_limiter.config, fused_limiter, "svc", gateways[0].shared)
    general = RateLimitStage(general_limiter.config, general_limiter, "svc", gateways[1].shared)
    for _ in range(6):  # four admitted (burst 3), then refused with Retry-After
        one, other = await ask(fused), await ask(general)
        assert (one[0], one[2]) == (other[0], other[2])
        assert one[1] == tuple((n, v.replace(b'"other"', b'"default"')) for n, v in other[1])
    assert [await ask(fused) for _ in range(2)][-1][0] == 429
    redis_server.stop()
    down = [(await ask(fused))[0] for _ in range(3)], [(await ask(general))[0] for _ in range(3)]
    assert down[0] == down[1] == {"allow": [200] * 3, "deny": [503] * 3, "local": [200, 200, 200]}[mode]
    for gw in gateways[:2]:
        assert gw.metrics.registry.get_sample_value(
            "gateway_ratelimit_decisions_total",
            {"service": "svc", "policy": "default" if gw is gateways[0] else "other", "result": "limited"},
        ) == (4 if gw is gateways[0] else 2)
