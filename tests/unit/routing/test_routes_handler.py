"""Declarative routes through the whole proxy handler (fake upstream, no sockets)."""

from __future__ import annotations

from typing import Any

from msa_gateway.model import Instance
from msa_gateway.proxy.handler import ProxyApp
from tests.support.fake_upstream import call, make_runtime

A, B = "127.0.0.1:9001", "127.0.0.1:9002"
TWO = {
    "users": (Instance("u", "127.0.0.1", 9001),),
    "orders": (Instance("o", "127.0.0.1", 9002),),
}


def app(routes: list[dict[str, Any]], **kw: Any) -> tuple[ProxyApp, Any]:
    rt, up, _ = make_runtime(routes=routes, **kw)
    rt.apply(TWO)
    return ProxyApp(rt), up


async def test_a_prefix_route_strips_its_prefix_and_says_so_upstream() -> None:
    proxy, up = app([{"service": "users", "path_prefix": "/api/users", "strip_prefix": True}])
    answer = await call(proxy, "GET", "/api/users/7?full=1")
    assert answer.status == 200
    (sent,) = up.calls
    assert (sent.address, sent.target) == (A, "/7?full=1")
    assert (b"x-forwarded-prefix", b"/api/users") in sent.headers


async def test_without_strip_the_whole_path_goes_upstream_and_segments_are_whole() -> None:
    proxy, up = app([{"service": "users", "path_prefix": "/api/users"}])
    assert (await call(proxy, "GET", "/api/users")).status == 200
    assert up.calls[-1].target == "/api/users"
    assert not any(n == b"x-forwarded-prefix" for n, _ in up.calls[-1].headers)
    # /api/usersx is not under /api/users: the default route takes it (service "api": unknown)
    assert (await call(proxy, "GET", "/api/usersx")).status == 404


async def test_the_default_route_still_works_next_to_routes_and_can_be_turned_off() -> None:
    proxy, up = app([{"service": "users", "path_prefix": "/api"}])
    assert (await call(proxy, "GET", "/orders/1")).status == 200
    assert up.calls[-1].address == B and up.calls[-1].target == "/1"
    proxy, up = app([{"service": "users", "path_prefix": "/api"}], gateway={"default_route": False})
    answer = await call(proxy, "GET", "/orders/1")
    assert answer.status == 404 and answer.json()["error"] == "service_not_found"
    assert not up.calls


async def test_host_beats_a_longer_prefix_and_methods_split_one_prefix() -> None:
    proxy, up = app(
        [
            {"service": "users", "path_prefix": "/shop/items"},
            {"service": "orders", "host": "*.example.com", "path_prefix": "/"},
            {"service": "users", "path_prefix": "/rw", "methods": ["GET"]},
            {"service": "orders", "path_prefix": "/rw"},
        ]
    )
    answer = await call(proxy, "GET", "/shop/items/1", headers=[(b"host", b"API.example.com:8443")])
    assert answer.status == 200 and up.calls[-1].address == B
    await call(proxy, "GET", "/shop/items/1", headers=[(b"host", b"example.com")])
    assert up.calls[-1].address == A  # "*.example.com" needs a subdomain
    await call(proxy, "GET", "/rw/x")
    assert up.calls[-1].address == A
    await call(proxy, "POST", "/rw/x")
    assert up.calls[-1].address == B


async def test_header_matches_pick_the_route_and_an_absent_header_falls_through() -> None:
    proxy, up = app(
        [
            {"service": "orders", "path_prefix": "/api", "headers": {"X-Version": "2"}},
            {"service": "users", "path_prefix": "/api"},
        ]
    )
    await call(proxy, "GET", "/api/a", headers=[(b"host", b"gw"), (b"x-version", b"2")])
    assert up.calls[-1].address == B
    await call(proxy, "GET", "/api/a", headers=[(b"host", b"gw"), (b"x-version", b"1")])
    assert up.calls[-1].address == A


async def test_a_route_to_a_service_not_registered_is_503_and_dot_segments_are_400() -> None:
    proxy, up = app(
        [{"service": "billing", "path_prefix": "/pay"}, {"service": "users", "path_prefix": "/u"}]
    )
    answer = await call(proxy, "GET", "/pay/1")
    assert answer.status == 503 and answer.json()["error"] == "no_healthy_instance"
    assert (await call(proxy, "GET", "/u/%2e%2e/admin")).status == 400
    assert not up.calls


async def test_a_regex_rewrite_changes_the_upstream_path_and_keeps_the_query() -> None:
    proxy, up = app(
        [
            {
                "service": "users",
                "path_prefix": "/v1",
                "rewrite": {"regex": "^/v1/items/([0-9]+)$", "to": "/item/\\1"},
            }
        ]
    )
    answer = await call(proxy, "GET", "/v1/items/42?x=1")
    assert answer.status == 200
    assert up.calls[-1].target == "/item/42?x=1"
    await call(proxy, "GET", "/v1/other")
    assert up.calls[-1].target == "/v1/other"  # no match: unchanged


async def test_a_prefix_rewrite_swaps_whole_segments() -> None:
    proxy, up = app(
        [{"service": "users", "path_prefix": "/old", "rewrite": {"prefix": "/old", "to": "/new/v2"}}]
    )
    await call(proxy, "GET", "/old/a/b")
    assert up.calls[-1].target == "/new/v2/a/b"
    await call(proxy, "GET", "/old")
    assert up.calls[-1].target == "/new/v2"


async def test_route_policies_merge_over_the_services_and_max_body_size_is_per_route() -> None:
    services = {"users": {"policies": {"headers": {"request": {"set": {"X-Svc": "${service}"}}}}}}
    proxy, up = app(
        [
            {
                "service": "users",
                "path_prefix": "/small",
                "max_body_size": 4,
                "policies": {"ip_rules": {"deny": ["10.0.0.0/8"]}},
            },
            {"service": "users", "path_prefix": "/open"},
        ],
        services=services,
    )
    answer = await call(proxy, "GET", "/small/x")
    assert answer.status == 403 and answer.json()["error"] == "forbidden"
    answer = await call(proxy, "POST", "/open/x", body=[b"123456789"])
    assert answer.status == 200
    assert (b"x-svc", b"users") in up.calls[-1].headers  # the service's policy holds on its routes
    assert len(up.calls) == 1


async def test_routes_share_their_services_balancer_and_metrics() -> None:
    proxy, _ = app([{"service": "users", "path_prefix": "/a"}, {"service": "users", "path_prefix": "/b"}])
    rt = proxy.rt
    await call(proxy, "GET", "/a/1")
    await call(proxy, "GET", "/b/1")
    await call(proxy, "GET", "/users/1")
    value = rt.metrics.registry.get_sample_value(
        "gateway_requests_total", {"service": "users", "method": "GET", "code": "200"}
    )
    assert value == 3
    table = rt.snapshot.routes
    assert table is not None
    base = rt.snapshot.services["users"]
    assert all(r.target is not None and r.target.balancer is base.balancer for r in table.routes)
