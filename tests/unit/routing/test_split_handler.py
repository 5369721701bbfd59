"""Split routes through the whole proxy handler (fake upstream, no sockets): targets, metrics, reload, health."""

from __future__ import annotations

from collections import Counter
from typing import Any

from msa_gateway.model import Instance
from msa_gateway.proxy.handler import ProxyApp
from msa_gateway.runtime import Runtime
from msa_gateway.settings import parse_config
from tests.support.fake_upstream import FakeUpstream, call, make_runtime

V1, V2 = "127.0.0.1:9001", "127.0.0.1:9002"
BOTH = {
    "orders-v1": (Instance("a", "127.0.0.1", 9001),),
    "orders-v2": (Instance("b", "127.0.0.1", 9002),),
}


def canary(weight: int = 5, **extra: Any) -> dict[str, Any]:
    return {
        "name": "orders",
        "path_prefix": "/api/orders",
        "strip_prefix": True,
        "split": [
            {"service": "orders-v1", "weight": 100 - weight},
            {"service": "orders-v2", "weight": weight},
        ],
        "match_first": [
            {"header": {"X-Canary": "1"}, "service": "orders-v2"},
            {"cookie": {"canary": "always"}, "service": "orders-v2"},
        ],
        **extra,
    }


def app(
    route: dict[str, Any], discovered: dict[str, Any] | None = None
) -> tuple[ProxyApp, FakeUpstream, Runtime]:
    rt, up, _ = make_runtime(routes=[route])
    rt.apply(BOTH if discovered is None else discovered)
    return ProxyApp(rt), up, rt


def split_total(rt: Runtime, route: str, service: str) -> float:
    value = rt.metrics.registry.get_sample_value(
        "gateway_route_split_total", {"route": route, "service": service}
    )
    return value or 0.0


async def test_a_canary_route_splits_by_weight_strips_its_prefix_and_counts_per_target() -> None:
    proxy, up, rt = app(canary(weight=20))
    for _ in range(1_000):
        assert (await call(proxy, "GET", "/api/orders/7")).status == 200
    seen = Counter(c.address for c in up.calls)
    assert 140 <= seen[V2] <= 260 and seen[V1] + seen[V2] == 1_000  # 20%: more than 5 standard deviations
    assert {c.target for c in up.calls} == {"/7"}
    assert split_total(rt, "orders", "orders-v2") == seen[V2]
    assert split_total(rt, "orders", "orders-v1") == seen[V1]
    counted = rt.metrics.requests.by_code("orders-v2")  # the service label stays the target service
    assert sum(counted.values()) == seen[V2]


async def test_the_canary_header_or_cookie_always_reaches_v2_whatever_the_weights() -> None:
    proxy, up, rt = app(canary(weight=1))
    for headers in ([(b"x-canary", b"1")], [(b"cookie", b"session=s1; canary=always")]):
        for _ in range(30):
            await call(proxy, "GET", "/api/orders/1", headers=[(b"host", b"gw"), *headers])
    assert {c.address for c in up.calls} == {V2}
    assert split_total(rt, "orders", "orders-v2") == 60
    assert len(rt.snapshot.services["orders-v2"].variants) == 1  # split and both rules share one view


async def test_a_sticky_user_sees_one_version_and_users_spread_by_weight() -> None:
    proxy, up, _ = app(canary(weight=50, sticky={"header": "X-User-ID"}))
    first: dict[bytes, str] = {}
    for round_ in range(3):
        for user in range(40):
            uid = b"u%d" % user
            await call(proxy, "GET", "/api/orders/1", headers=[(b"host", b"gw"), (b"x-user-id", uid)])
            assert first.setdefault(uid, up.calls[-1].address) == up.calls[-1].address, (round_, uid)
    assert set(first.values()) == {V1, V2}  # 40 users at 50/50 all on one side: 2 in 10^12


async def test_a_canary_that_is_not_registered_yet_gets_nothing_and_503_only_when_no_target_is() -> None:
    proxy, up, _ = app(canary(weight=50), {"orders-v1": BOTH["orders-v1"]})
    for _ in range(50):
        assert (await call(proxy, "GET", "/api/orders/1")).status == 200
    assert (await call(proxy, "GET", "/api/orders/1", headers=[(b"x-canary", b"1")])).status == 200
    assert {c.address for c in up.calls} == {V1}
    proxy, up, _ = app(canary(), {"other": BOTH["orders-v1"]})
    answer = await call(proxy, "GET", "/api/orders/1")
    assert answer.status == 503 and answer.json()["error"] == "no_healthy_instance"
    assert not up.calls


async def test_each_target_gets_the_routes_policies_over_its_own_service() -> None:
    route = canary(weight=50, policies={"headers": {"request": {"set": {"X-Route": "orders"}}}})
    proxy, up, _ = app(route)
    for _ in range(100):
        await call(proxy, "GET", "/api/orders/1")
    assert {c.address for c in up.calls} == {V1, V2}  # 50/50: one side empty once in 10^29
    assert all((b"x-route", b"orders") in c.headers for c in up.calls)


async def test_new_weights_apply_to_the_next_request_and_health_shows_the_split() -> None:
    proxy, up, rt = app(canary(weight=5))
    data = {"defaults": {"health_check": {"path": None}}, "routes": [canary(weight=95)]}
    rt.reconfigure(parse_config(data, "test.yaml"))
    rt.apply(BOTH)  # the file names no instances: feed the ones a registry would
    for _ in range(200):
        await call(proxy, "GET", "/api/orders/1")
    assert Counter(c.address for c in up.calls)[V2] >= 170  # 95%: 190 expected, sd 3
    shown = rt.reloader.summary()["splits"]["orders"]
    assert shown["targets"] == [
        {"service": "orders-v1", "weight": 5, "registered": True, "share": 0.05},
        {"service": "orders-v2", "weight": 95, "registered": True, "share": 0.95},
    ]
    assert shown["match_first"][0] == {
        "header": {"x-canary": "1"},
        "cookie": {},
        "service": "orders-v2",
        "registered": True,
    }
    assert shown["sticky"] is None
