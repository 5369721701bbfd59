"""``rate_limit`` through the whole proxy handler (fake upstream, frozen clock, local backend)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from msa_gateway.policies.ratelimit import LocalRateLimitStage, RateLimitStage, RedisRateLimitStage
from msa_gateway.proxy.handler import ProxyApp
from msa_gateway.runtime import Runtime
from tests.support.fake_upstream import FakeUpstream, call, instances, make_runtime

A = "127.0.0.1:9001"
ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdef01"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gateway(block: dict[str, Any], **policies: Any) -> tuple[ProxyApp, FakeUpstream, Clock, Runtime]:
    rt, up, _ = make_runtime(policies={"rate_limit": block, **policies})
    clock = Clock()
    rt.shared.monotonic = clock
    rt.apply(instances(9001))
    return ProxyApp(rt), up, clock, rt


def decisions(rt: Runtime, result: str, policy: str = "default") -> float:
    value = rt.metrics.registry.get_sample_value(
        "gateway_ratelimit_decisions_total", {"service": "svc", "policy": policy, "result": result}
    )
    return value or 0.0


async def test_over_the_limit_answers_429_json_with_retry_after_and_ratelimit_headers() -> None:
    proxy, up, _, rt = gateway({"limits": [{"rate": "2/second", "burst": 1}]})
    answers = [await call(proxy) for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 429]
    refused = answers[2]
    assert refused.json()["error"] == "rate_limited" and "'default'" in refused.json()["detail"]
    assert refused.headers[b"retry-after"] == b"1"
    assert refused.headers[b"ratelimit-policy"] == b'"default";q=2;w=1'
    assert refused.headers[b"ratelimit"] == b'"default";r=0;t=1'
    assert up.hits(A) == 2
    assert decisions(rt, "allowed") == 2 and decisions(rt, "limited") == 1


async def test_admitted_answers_carry_the_policy_and_the_remaining_quota() -> None:
    proxy, _, clock, _ = gateway({"name": "per-ip", "limits": ["10/second", "100/hour"]})
    answer = await call(proxy)
    assert answer.status == 200
    assert answer.headers[b"ratelimit-policy"] == b'"per-ip-0";q=10;w=1, "per-ip-1";q=100;w=3600'
    assert answer.headers[b"ratelimit"] == b'"per-ip-0";r=9;t=1, "per-ip-1";r=99;t=36'
    clock.now += 1.0
    assert (await call(proxy)).headers[b"ratelimit"].startswith(b'"per-ip-0";r=9;')


async def test_concurrent_requests_are_decided_exactly() -> None:
    proxy, up, _, _ = gateway({"limits": [{"rate": "10/second", "burst": 9}]})
    answers = await asyncio.gather(*(call(proxy) for _ in range(200)))
    assert sum(a.status == 200 for a in answers) == 10 and up.hits(A) == 10
    assert sum(a.status == 429 for a in answers) == 190


async def test_a_one_limit_local_policy_takes_the_fused_stage_and_answers_as_the_general_one() -> None:
    fused, _, fused_clock, fused_rt = gateway({"limits": [{"rate": "4/second", "burst": 2}]})
    general, _, general_clock, general_rt = gateway({"limits": [{"rate": "4/second", "burst": 2}]})
    (stage,) = fused_rt.snapshot.services["svc"].request_stages
    assert type(stage) is LocalRateLimitStage
    (slow,) = general_rt.snapshot.services["svc"].request_stages
    assert isinstance(slow, RateLimitStage)
    general_rt.snapshot.services["svc"].request_stages = (
        RateLimitStage(slow.config, slow.limiter, "svc", general_rt.shared),
    )
    for step in (0.0, 0.0, 0.0, 0.0, 0.1, 0.3, 0.0, 1.0, 0.0):
        fused_clock.now += step
        general_clock.now += step
        one, other = await call(fused), await call(general)
        assert (one.status, one.headers.get(b"ratelimit"), one.headers.get(b"retry-after")) == (
            other.status,
            other.headers.get(b"ratelimit"),
            other.headers.get(b"retry-after"),
        )
    for result in ("allowed", "limited"):
        assert decisions(fused_rt, result) == decisions(general_rt, result) > 0


@pytest.mark.parametrize(
    ("block", "kind"),
    [
        ({"limits": ["4/second"]}, LocalRateLimitStage),
        ({"limits": ["4/second", "100/hour"]}, RateLimitStage),
        ({"limits": ["4/second"], "backend": "redis"}, RedisRateLimitStage),
        ({"limits": ["4/second", "100/hour"], "backend": "redis"}, RateLimitStage),
        ({"limits": ["4/second"], "backend": "redis", "sync_interval": 0.1}, RateLimitStage),
    ],
)
def test_one_limit_without_a_precheck_takes_its_backends_fused_stage(
    block: dict[str, Any], kind: type
) -> None:
    _, _, _, rt = gateway(block)
    (stage,) = rt.snapshot.services["svc"].request_stages
    assert type(stage) is kind


async def test_the_steady_rate_refills_the_bucket() -> None:
    proxy, _, clock, _ = gateway({"limits": [{"rate": "10/second", "burst": 0}]})
    statuses = []
    for _ in range(50):  # 50 requests, one every 25 ms: every fourth slot of 100 ms passes
        statuses.append((await call(proxy)).status)
        clock.now += 0.025
    assert statuses.count(200) == 13 and statuses.count(429) == 37


async def test_consumers_have_their_own_buckets_and_anonymous_requests_count_by_ip(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_API_KEYS", f"alice:{ALICE}, bob:{BOB}")
    proxy, _, _, _ = gateway(
        {"key": "consumer", "limits": [{"rate": "1/minute", "burst": 0}]},
        api_key={"keys_env": "TEST_API_KEYS"},
    )

    async def as_(key: str) -> int:
        return (await call(proxy, headers=[(b"host", b"gw"), (b"x-api-key", key.encode())])).status

    assert [await as_(ALICE), await as_(ALICE), await as_(BOB)] == [200, 429, 200]


async def test_a_header_key_separates_clients_and_a_missing_header_counts_by_ip() -> None:
    proxy, _, _, _ = gateway({"key": "header:X-Tenant", "limits": [{"rate": "1/minute", "burst": 0}]})

    async def tenant(name: str | None) -> int:
        headers = [(b"host", b"gw")] + ([(b"x-tenant", name.encode())] if name else [])
        return (await call(proxy, headers=headers)).status

    assert [await tenant("a"), await tenant("a"), await tenant("b")] == [200, 429, 200]
    assert [await tenant(None), await tenant(None)] == [200, 429]


async def test_the_ip_key_follows_trusted_proxies() -> None:
    rt, _, _ = make_runtime(
        policies={"rate_limit": {"limits": [{"rate": "1/minute", "burst": 0}]}},
        gateway={"trusted_proxies": ["10.0.0.0/8"]},
    )
    rt.apply(instances(9001))
    proxy = ProxyApp(rt)

    async def from_(client: str) -> int:
        headers = [(b"host", b"gw"), (b"x-forwarded-for", client.encode())]
        return (await call(proxy, headers=headers)).status

    assert [await from_("203.0.113.1"), await from_("203.0.113.1"), await from_("203.0.113.2")] == [
        200,
        429,
        200,
    ]


async def test_buckets_survive_a_snapshot_swap() -> None:
    proxy, _, _, rt = gateway({"limits": [{"rate": "1/minute", "burst": 0}]})
    assert (await call(proxy)).status == 200
    rt.apply(instances(9001, 9002))
    assert (await call(proxy)).status == 429


async def test_other_routes_are_not_limited_and_get_no_headers() -> None:
    rt, _, _ = make_runtime(
        {"svc": {"policies": {"rate_limit": {"limits": ["1/minute"]}}}, "free": {}},
    )
    rt.apply({**instances(9001), **instances(9002, service="free")})
    proxy = ProxyApp(rt)
    answers = [await call(proxy, path="/free/x") for _ in range(3)]
    assert all(a.status == 200 and b"ratelimit" not in a.headers for a in answers)
