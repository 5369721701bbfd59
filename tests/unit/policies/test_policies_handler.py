"""ip_rules, cors, headers and path_rewrite through the whole proxy handler (fake upstream, no sockets)."""

from __future__ import annotations

from typing import Any

from msa_gateway.proxy.handler import ProxyApp
from tests.support.fake_upstream import Reply, call, instances, make_runtime

A = "127.0.0.1:9001"
SPA = "https://app.example.com"
CORS = {
    "allow_origins": [SPA, "https://*.preview.example.com"],
    "allow_methods": ["GET", "POST"],
    "allow_headers": ["Authorization", "Content-Type"],
    "expose_headers": ["X-Total"],
    "max_age": 300,
    "allow_credentials": True,
}


def app(
    policies: dict[str, Any], gateway: dict[str, Any] | None = None, **defaults: Any
) -> tuple[ProxyApp, Any]:
    rt, up, _ = make_runtime({"svc": {"policies": policies, **defaults}}, gateway=gateway)
    rt.apply(instances(9001))
    return ProxyApp(rt), up


def preflight(origin: str, method: str = "POST", asked: str | None = None) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"host", b"gw"),
        (b"origin", origin.encode()),
        (b"access-control-request-method", method.encode()),
    ]
    if asked is not None:
        headers.append((b"access-control-request-headers", asked.encode()))
    return headers


async def test_a_preflight_is_answered_by_the_gateway_and_never_forwarded() -> None:
    proxy, up = app({"cors": CORS})
    answer = await call(
        proxy, "OPTIONS", "/svc/items", headers=preflight(SPA, asked="authorization, content-type")
    )
    assert answer.status == 204 and answer.body == b""
    h = answer.headers
    assert h[b"access-control-allow-origin"] == SPA.encode()
    assert h[b"access-control-allow-credentials"] == b"true"
    assert h[b"access-control-allow-methods"] == b"GET, POST"
    assert h[b"access-control-allow-headers"] == b"authorization, content-type"
    assert h[b"access-control-max-age"] == b"300"
    assert b"Origin" in h[b"vary"] and b"content-length" not in h
    assert not up.calls


async def test_a_preflight_from_a_stranger_or_for_another_method_or_header_is_403_json() -> None:
    proxy, up = app({"cors": CORS})
    for headers, why in [
        (preflight("https://evil.example.net"), "origin"),
        (preflight(SPA, "DELETE"), "method DELETE"),
        (preflight(SPA, "POST", "x-secret"), "header x-secret"),
        (preflight("https://preview.example.com"), "origin"),  # the wildcard needs a subdomain
    ]:
        answer = await call(proxy, "OPTIONS", "/svc/x", headers=headers)
        assert answer.status == 403 and why in answer.json()["detail"]
        assert answer.json()["error"] == "cors_forbidden"
        assert b"access-control-allow-origin" not in answer.headers
    assert not up.calls


async def test_a_wildcard_subdomain_origin_is_allowed_and_echoed() -> None:
    proxy, _ = app({"cors": CORS})
    origin = "https://pr-12.preview.example.com"
    answer = await call(proxy, "OPTIONS", "/svc/x", headers=preflight(origin))
    assert answer.status == 204 and answer.headers[b"access-control-allow-origin"] == origin.encode()


async def test_a_simple_request_gets_cors_headers_and_the_instances_own_are_replaced() -> None:
    proxy, up = app({"cors": CORS})
    up.script(A, Reply(200, headers=[(b"Access-Control-Allow-Origin", b"*"), (b"Vary", b"Accept-Encoding")]))
    answer = await call(proxy, "GET", "/svc/x", headers=[(b"host", b"gw"), (b"origin", SPA.encode())])
    start = next(m for m in answer.messages if m["type"] == "http.response.start")
    names = [n for n, _ in start["headers"]]
    assert names.count(b"access-control-allow-origin") == 1
    assert answer.headers[b"access-control-allow-origin"] == SPA.encode()
    assert answer.headers[b"access-control-expose-headers"] == b"x-total"
    assert (b"vary", b"Origin") in start["headers"] and (b"vary", b"Accept-Encoding") in start["headers"]


async def test_vary_origin_is_sent_even_without_an_origin_and_not_twice() -> None:
    proxy, up = app({"cors": CORS})
    answer = await call(proxy, "GET", "/svc/x")
    assert answer.headers[b"vary"] == b"Origin" and b"access-control-allow-origin" not in answer.headers
    up.script(A, Reply(200, headers=[(b"vary", b"origin, accept")]))
    answer = await call(proxy, "GET", "/svc/x", headers=[(b"host", b"gw"), (b"origin", SPA.encode())])
    start = next(m for m in answer.messages if m["type"] == "http.response.start")
    assert [v for n, v in start["headers"] if n == b"vary"] == [b"origin, accept"]


async def test_any_origin_without_credentials_sends_a_star_and_no_vary() -> None:
    proxy, _ = app({"cors": {"allow_origins": ["*"]}})
    answer = await call(proxy, "GET", "/svc/x", headers=[(b"host", b"gw"), (b"origin", b"https://x.test")])
    assert answer.headers[b"access-control-allow-origin"] == b"*"
    assert b"vary" not in answer.headers and b"access-control-allow-credentials" not in answer.headers


async def test_the_gateways_own_errors_carry_cors_headers_for_allowed_origins() -> None:
    proxy, _ = app({"cors": CORS, "ip_rules": {"deny": ["10.0.0.0/8"]}})
    answer = await call(proxy, "GET", "/svc/x", headers=[(b"host", b"gw"), (b"origin", SPA.encode())])
    assert answer.status == 403
    assert answer.headers[b"access-control-allow-origin"] == SPA.encode()
    assert answer.headers[b"vary"] == b"Origin"
    proxy, _ = app({"cors": CORS}, max_body_size=2)
    answer = await call(
        proxy, "POST", "/svc/x", headers=[(b"host", b"gw"), (b"origin", SPA.encode())], body=[b"abc"]
    )
    assert answer.status == 413 and answer.headers[b"access-control-allow-origin"] == SPA.encode()


async def test_a_plain_options_request_is_forwarded() -> None:
    proxy, up = app({"cors": CORS})
    answer = await call(proxy, "OPTIONS", "/svc/x", headers=[(b"host", b"gw"), (b"origin", SPA.encode())])
    assert answer.status == 200 and len(up.calls) == 1


async def test_ip_rules_use_the_address_trusted_proxies_resolve() -> None:
    policies = {"ip_rules": {"allow": ["192.0.2.0/24"], "deny": ["192.0.2.66"]}}
    proxy, up = app(policies, gateway={"trusted_proxies": ["10.0.0.0/8"]})
    via = [(b"host", b"gw"), (b"x-forwarded-for", b"198.51.100.1, 192.0.2.10")]
    assert (await call(proxy, "GET", "/svc/x", headers=via)).status == 200
    bad = [(b"host", b"gw"), (b"x-forwarded-for", b"192.0.2.66")]
    assert (await call(proxy, "GET", "/svc/x", headers=bad)).status == 403
    # from an untrusted peer the header is ignored: the peer itself (10.0.0.9) is not allowed
    proxy, _ = app(policies)
    assert (await call(proxy, "GET", "/svc/x", headers=via)).status == 403
    assert len(up.calls) == 1


async def test_header_transforms_on_both_sides_with_variables() -> None:
    transforms = {
        "request": {
            "remove": ["X-Debug"],
            "rename": {"X-Old": "X-New"},
            "set": {"X-Client": "${client_ip}", "X-Trace": "gw-${request_id}"},
            "add": {"X-Via": "${service}", "X-Consumer": "${consumer}"},
        },
        "response": {"remove": ["Server"], "set": {"X-Frame-Options": "DENY"}, "rename": {"X-Up": "X-Down"}},
    }
    proxy, up = app({"headers": transforms})
    up.script(A, Reply(200, headers=[(b"server", b"nginx"), (b"x-up", b"1")]))
    sent_by_client = {b"x-debug": b"1", b"x-old": b"o", b"x-client": b"spoofed", b"x-request-id": b"r1"}
    headers = [(b"host", b"gw"), *sent_by_client.items()]
    answer = await call(proxy, "GET", "/svc/x", headers=headers)
    sent = up.calls[-1].headers
    assert (b"x-new", b"o") in sent and not any(n in {b"x-debug", b"x-old"} for n, _ in sent)
    assert [v for n, v in sent if n == b"x-client"] == [b"10.0.0.9"]
    assert (b"x-trace", b"gw-r1") in sent and (b"x-via", b"svc") in sent
    assert not any(n == b"x-consumer" for n, _ in sent)  # no consumer: the header is left out
    assert b"server" not in answer.headers and answer.headers[b"x-frame-options"] == b"DENY"
    assert answer.headers[b"x-down"] == b"1"


async def test_path_rewrite_as_a_service_policy() -> None:
    proxy, up = app({"path_rewrite": {"prefix": "/v1", "to": "/api/v1"}})
    await call(proxy, "GET", "/svc/v1/items?x=1")
    assert up.calls[-1].target == "/api/v1/items?x=1"
    await call(proxy, "GET", "/svc/v10")
    assert up.calls[-1].target == "/v10"
