"""The policy table, in the order stages run, the parsing of ``policies:`` blocks and compilation per route.

A policy is one module plus one ``PolicyType`` entry here: its name (the key under
``policies:``), a ``parse`` that turns the YAML block into a frozen config (raising
``PolicyError(key, reason)``), and factories for its request and/or response stage. Stages run
in table order; ``max_body_size`` (a service option, not a named policy) runs last.

Order of request stages (documented in the README): IP rules -> CORS (a preflight is answered
before authentication, which it never carries) -> authentication -> rate limit -> transforms ->
body size. Policies that are not built yet slot in at their place. A factory may return None when
the config leaves its side empty (``headers`` with only response operations has no request stage).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from msa_gateway.policies import api_key, cors, ip_rules, jwt_config, ratelimit_config, rewrite, transforms
from msa_gateway.policies.base import PolicyError
from msa_gateway.policies.body_size import BodySizeLimit
from msa_gateway.policies.jwt_auth import JwtAuth
from msa_gateway.policies.ratelimit import RateLimitHeaders, RateLimitStage

if TYPE_CHECKING:
    from msa_gateway.model import ServiceSpec
    from msa_gateway.policies.base import RequestStage, ResponseStage

__all__ = [
    "POLICIES",
    "POLICY_NAMES",
    "PolicyError",  # defined in base.py so that policy modules can raise it; re-exported here
    "PolicyType",
    "compile_request_stages",
    "compile_response_stages",
    "merge_policies",
]


@dataclass(frozen=True, slots=True)
class PolicyType:
    """One configurable policy."""

    name: str
    parse: Callable[[Any], Hashable]
    request: Callable[[Any, ServiceSpec], RequestStage | None] | None = None
    response: Callable[[Any, ServiceSpec], ResponseStage | None] | None = None


POLICIES: tuple[PolicyType, ...] = (
    PolicyType("ip_rules", ip_rules.parse, ip_rules.IpRules.build),
    PolicyType("cors", cors.parse, cors.CorsPreflight.build, cors.CorsResponse.build),
    # authentication
    PolicyType("api_key", api_key.parse, api_key.ApiKeyAuth.build),
    PolicyType("jwt", jwt_config.parse, JwtAuth.build),
    PolicyType("rate_limit", ratelimit_config.parse, RateLimitStage.build, RateLimitHeaders.build),
    PolicyType(
        "headers", transforms.parse, transforms.RequestTransforms.build, transforms.ResponseTransforms.build
    ),
    PolicyType("path_rewrite", rewrite.parse, rewrite.PathRewrite.build),
)
POLICY_NAMES: tuple[str, ...] = tuple(p.name for p in POLICIES)


def merge_policies(
    base: tuple[tuple[str, Hashable], ...],
    blocks: Mapping[str, Any],
    table: tuple[PolicyType, ...] | None = None,
) -> tuple[tuple[str, Hashable], ...]:
    """Return ``base`` with each block of ``blocks`` parsed and put in its place (``null`` removes one).

    A service's block replaces the default's block of the same name as a whole. The result is in
    table order, so equal configurations compare equal.
    """
    table = POLICIES if table is None else table
    by_name = {p.name: p for p in table}
    merged: dict[str, Hashable] = dict(base)
    for name, raw in blocks.items():
        policy = by_name.get(name)
        if policy is None:
            known = ", ".join(by_name) or "none yet"
            raise PolicyError(name, f"unknown policy; known: {known}")
        if raw is None:
            merged.pop(name, None)
            continue
        try:
            merged[name] = policy.parse(raw)
        except PolicyError as exc:
            raise PolicyError(f"{name}.{exc.key}", exc.reason) from None
        except (TypeError, ValueError) as exc:
            raise PolicyError(name, str(exc)) from None
    return tuple((p.name, merged[p.name]) for p in table if p.name in merged)


def compile_request_stages(spec: ServiceSpec) -> tuple[RequestStage, ...]:
    """Return the request stages ``spec`` configures, in table order (empty when none)."""
    options = spec.options
    built = (
        p.request(options.policy(p.name), spec) for p in POLICIES if p.request and options.policy(p.name)
    )
    stages = [stage for stage in built if stage is not None]
    body = BodySizeLimit.build(spec)
    if body is not None:
        stages.append(body)
    return tuple(stages)


def compile_response_stages(spec: ServiceSpec) -> tuple[ResponseStage, ...]:
    """Return the response stages ``spec`` configures, in table order (empty when none)."""
    options = spec.options
    built = (
        p.response(options.policy(p.name), spec) for p in POLICIES if p.response and options.policy(p.name)
    )
    return tuple(stage for stage in built if stage is not None)
