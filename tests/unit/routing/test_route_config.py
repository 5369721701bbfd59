"""``routes:`` and policy blocks: bad input stops start-up with file, key and reason."""

from __future__ import annotations

from typing import Any

import pytest

from msa_gateway.errors import ConfigError
from msa_gateway.policies.rewrite import nested_repeat
from msa_gateway.settings import parse_config


def load(routes: list[dict[str, Any]] | None = None, **services: Any) -> Any:
    data: dict[str, Any] = {"services": services}
    if routes is not None:
        data["routes"] = routes
    return parse_config(data, "gw.yaml")


@pytest.mark.parametrize(
    ("routes", "key", "reason"),
    [
        ([{"path_prefix": "/a"}], "routes.0.service", "Field required"),
        ([{"service": "s", "path_prefix": "/a", "colour": 1}], "routes.0.colour", "unknown key"),
        ([{"service": "s", "path_prefix": "a"}], "routes.0.path_prefix", "not a path prefix"),
        ([{"service": "s", "path_prefix": "/a/../b"}], "routes.0.path_prefix", "not a path prefix"),
        ([{"service": "s", "path_prefix": "/a%2f"}], "routes.0.path_prefix", "not a path prefix"),
        ([{"service": "s", "path_prefix": "/health/x"}], "routes.0.path_prefix", "shadowed: /health"),
        ([{"service": "metrics", "path_prefix": "/a"}], "routes.0.service", "gateway endpoint"),
        ([{"service": "s", "host": "a b", "path_prefix": "/a"}], "routes.0.host", "not a host name"),
        ([{"service": "s", "methods": [], "path_prefix": "/a"}], "routes.0.methods", "non-empty"),
        ([{"service": "s", "strip_prefix": True}], "routes.0.strip_prefix", "nothing to strip"),
        (
            [
                {
                    "service": "s",
                    "path_prefix": "/a",
                    "strip_prefix": True,
                    "rewrite": {"prefix": "/a", "to": "/b"},
                }
            ],
            "routes.0.rewrite",
            "not both",
        ),
        (
            [{"service": "s", "path_prefix": "/a", "rewrite": {"regex": "(a+)+", "to": "/"}}],
            "routes.0.rewrite.regex",
            "backtracking",
        ),
        (
            [{"service": "s", "path_prefix": "/a", "rewrite": {"regex": "(", "to": "/"}}],
            "routes.0.rewrite.regex",
            "invalid pattern",
        ),
        (
            [{"service": "s", "path_prefix": "/a", "rewrite": {"prefix": "/a"}}],
            "routes.0.rewrite.to",
            "required",
        ),
        (
            [{"service": "s", "path_prefix": "/a", "policies": {"nope": {}}}],
            "routes.0.policies.nope",
            "unknown policy",
        ),
        (
            [
                {"service": "s", "path_prefix": "/a", "name": "x"},
                {"service": "s", "path_prefix": "/b", "name": "x"},
            ],
            "routes.1.name",
            "already",
        ),
        (
            [{"service": "s", "path_prefix": "/a"}, {"service": "t", "path_prefix": "/a/"}],
            "routes.1",
            "conflicts with routes.0",
        ),
        (
            [
                {"service": "s", "path_prefix": "/a", "methods": ["GET", "POST"]},
                {"service": "t", "path_prefix": "/a", "methods": ["post"]},
            ],
            "routes.1",
            "conflicts with routes.0",
        ),
        (
            [
                {"service": "s", "path_prefix": "/a", "headers": {"X-A": "1"}},
                {"service": "t", "path_prefix": "/a", "headers": {"X-B": "1"}},
            ],
            "routes.1",
            "conflicts",
        ),
        (
            [{"service": "s", "host": "*.x.com"}, {"service": "t", "host": "*.X.com:80"}],
            "routes.1",
            "conflicts",
        ),
    ],
)
def test_bad_routes_name_file_key_and_reason(routes: list[dict[str, Any]], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(routes)
    assert err.value.source == "gw.yaml"
    assert err.value.key == key
    assert reason in err.value.reason


def test_routes_that_differ_in_rank_or_cannot_meet_are_fine() -> None:
    config = load(
        [
            {"service": "s", "path_prefix": "/a"},
            {"service": "t", "path_prefix": "/a", "methods": ["POST"]},  # methods rank higher
            {"service": "t", "path_prefix": "/a", "methods": ["GET"]},  # disjoint from POST
            {"service": "u", "path_prefix": "/a", "headers": {"X-V": "1"}},  # more headers rank higher
            {"service": "u", "path_prefix": "/a", "headers": {"X-V": "2"}},  # contradicting values
            {"service": "s", "host": "api.x.com", "path_prefix": "/a"},
        ]
    )
    assert [r.key for r in config.routes] == [f"routes.{i}" for i in range(6)]


@pytest.mark.parametrize(
    ("policies", "key", "reason"),
    [
        ({"cors": {}}, "cors.allow_origins", "required"),
        ({"cors": {"allow_origins": ["*"], "allow_credentials": True}}, "cors.allow_origins", "credentials"),
        ({"cors": {"allow_origins": ["app.example.com"]}}, "cors.allow_origins.0", "not an origin"),
        ({"cors": {"allow_origins": ["https://a.*.com"]}}, "cors.allow_origins.0", "wildcard"),
        ({"cors": {"allow_origins": ["https://a.com"], "max_age": -1}}, "cors.max_age", "integer"),
        ({"cors": {"allow_origins": ["https://a.com"], "colour": 1}}, "cors.colour", "unknown key"),
        ({"ip_rules": {"allow": ["10.0.0.0/33"]}}, "ip_rules.allow.0", "not an IP network"),
        ({"ip_rules": {}}, "ip_rules.allow", "at least one"),
        ({"headers": {"request": {"set": {"Host": "x"}}}}, "headers.request.set.Host", "set by the gateway"),
        (
            {"headers": {"request": {"set": {"X-A": "${user}"}}}},
            "headers.request.set.X-A",
            "unknown variable",
        ),
        ({"headers": {"response": {"add": {"X-A": "a\r\nb"}}}}, "headers.response.add.X-A", "control"),
        ({"headers": {"response": {"remove": ["bad name"]}}}, "headers.response.remove", "not a header name"),
        ({"headers": {}}, "headers.request", "give request"),
        ({"path_rewrite": {"prefix": "/a", "regex": "/b", "to": "/"}}, "path_rewrite.prefix", "exactly one"),
        ({"path_rewrite": {"regex": "^/a$", "to": "/b?x=1"}}, "path_rewrite.to", "no '?'"),
        ({"path_rewrite": {"regex": "^/a$", "to": "/\\2"}}, "path_rewrite.to", "invalid replacement"),
    ],
)
def test_bad_policy_blocks_name_the_key(policies: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(s={"policies": policies})
    assert err.value.key == f"services.s.policies.{key}"
    assert reason in err.value.reason


@pytest.mark.parametrize(
    ("pattern", "nested"),
    [
        ("(a+)+", True),
        ("((ab)*c)*", True),
        ("(?:x{2,})+", True),
        ("((a+))+", True),
        ("(a|b)+", False),
        ("^/v1/items/([0-9]+)$", False),
        ("([0-9]+)/(x)*", False),
        ("[(+)]+", False),
        ("[]a+)]+", False),
        (r"\(a+\)+", False),
        ("(a+)?", False),
    ],
)
def test_a_repeated_group_that_repeats_inside_is_found_at_any_depth(pattern: str, nested: bool) -> None:
    assert nested_repeat(pattern) is nested
