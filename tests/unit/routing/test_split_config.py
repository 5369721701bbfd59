"""A route's ``split:``, ``match_first:`` and ``sticky:``: what validates, and errors with file, key and reason."""

from __future__ import annotations

from typing import Any

import pytest

from msa_gateway.errors import ConfigError
from msa_gateway.routing.config import RouteConfig
from msa_gateway.settings import parse_config

V1, V2 = {"service": "orders-v1", "weight": 95}, {"service": "orders-v2", "weight": 5}


def route(**fields: Any) -> RouteConfig:
    data = {"path_prefix": "/orders", **fields}
    data.setdefault("split", [V1, V2])
    if data["split"] is None:
        del data["split"]
    config = parse_config({"services": {"orders-v1": {"max_body_size": 10}}, "routes": [data]}, "gw.yaml")
    (compiled,) = config.routes
    return compiled


def test_a_split_keeps_weights_in_order_and_each_target_has_its_services_options() -> None:
    r = route(max_body_size=None, policies={"headers": {"request": {"set": {"X-Route": "orders"}}}})
    assert r.split is not None
    assert [(t.service, t.weight) for t in r.split.targets] == [("orders-v1", 95), ("orders-v2", 5)]
    assert r.split.total == 100
    v1, v2 = r.split.targets
    assert v1.options.max_body_size == 10 and v2.options.max_body_size != 10  # each service's own
    assert all("headers" in dict(t.options.policies) for t in (v1, v2))  # the route's blocks on both
    assert (r.service, r.options) == ("orders-v1", v1.options)  # the first target stands for the route


def test_match_first_rules_keep_file_order_and_a_plain_service_becomes_a_one_target_split() -> None:
    r = route(
        split=None,
        service="orders-v1",
        match_first=[
            {"header": {"X-Canary": "1"}, "service": "orders-v2"},
            {"cookie": {"canary": "yes"}, "header": {"X-Team": "qa"}, "service": "orders-v3"},
        ],
    )
    assert r.split is not None
    assert [(t.service, t.weight) for t in r.split.targets] == [("orders-v1", 1)]
    first, second = r.split.rules
    assert (first.headers, first.cookies, first.service) == (((b"x-canary", b"1"),), (), "orders-v2")
    assert (second.headers, second.cookies) == (((b"x-team", b"qa"),), ((b"canary", b"yes"),))


def test_sticky_takes_a_header_in_lower_case_or_a_cookie_as_written() -> None:
    assert route(sticky={"header": "X-User-ID"}).split.sticky_header == b"x-user-id"  # type: ignore[union-attr]
    assert route(sticky={"cookie": "Session"}).split.sticky_cookie == b"Session"  # type: ignore[union-attr]


def test_a_plain_route_has_no_split() -> None:
    assert route(split=None, service="orders-v1").split is None


@pytest.mark.parametrize(
    ("fields", "key", "reason"),
    [
        ({"split": None}, "routes.0.service", "Field required (or a split:"),
        ({"service": "orders-v1"}, "routes.0.split", "not both"),
        ({"split": []}, "routes.0.split", "at least one"),
        ({"split": [V1, {"service": "orders-v2", "weight": 0}]}, "routes.0.split.1.weight", "greater than"),
        ({"split": [V1, {"service": "orders-v2", "weight": -5}]}, "routes.0.split.1.weight", "greater than"),
        ({"split": [V1, {"service": "orders-v2", "weight": 2.5}]}, "routes.0.split.1.weight", "integer"),
        ({"split": [V1, {"service": "orders-v2", "weight": "5"}]}, "routes.0.split.1.weight", "integer"),
        ({"split": [V1, {"service": "orders-v2"}]}, "routes.0.split.1.weight", "required"),
        (
            {"split": [V1, {"service": "metrics", "weight": 5}]},
            "routes.0.split.1.service",
            "gateway endpoint",
        ),
        ({"split": [V1, {"service": "a b", "weight": 5}]}, "routes.0.split.1.service", "service names"),
        ({"split": [V1, {**V1, "weight": 1}]}, "routes.0.split.1.service", "already split.0"),
        ({"split": [V1, {**V2, "colour": 1}]}, "routes.0.split.1.colour", "unknown key"),
        ({"match_first": [{"service": "orders-v2"}]}, "routes.0.match_first.0", "header: and/or cookie:"),
        (
            {"match_first": [{"header": {"X Canary": "1"}, "service": "orders-v2"}]},
            "routes.0.match_first.0.header.X Canary",
            "not a header name",
        ),
        (
            {"match_first": [{"cookie": {"c": "a\nb"}, "service": "orders-v2"}]},
            "routes.0.match_first.0.cookie.c",
            "control characters",
        ),
        (
            {"match_first": [{"header": {"X-C": "1"}, "service": "docs"}]},
            "routes.0.match_first.0.service",
            "gateway endpoint",
        ),
        (
            {"split": None, "service": "orders-v1", "sticky": {"header": "X-U"}},
            "routes.0.sticky",
            "needs a split",
        ),
        ({"sticky": {}}, "routes.0.sticky", "one header: or one cookie:"),
        ({"sticky": {"header": "X-U", "cookie": "u"}}, "routes.0.sticky", "one header: or one cookie:"),
        ({"sticky": {"cookie": "a;b"}}, "routes.0.sticky.cookie", "not a cookie name"),
    ],
)
def test_bad_splits_name_file_key_and_reason(fields: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        route(**fields)
    assert (err.value.source, err.value.key) == ("gw.yaml", key)
    assert reason in err.value.reason, err.value.reason


def test_a_target_that_is_not_in_services_is_allowed_it_may_register_later() -> None:
    r = route(split=[V1, {"service": "orders-v9", "weight": 5}])
    assert r.split is not None and r.split.targets[1].service == "orders-v9"
