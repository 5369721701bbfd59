"""A route's traffic split as written: ``split`` weights, ``match_first`` rules and ``sticky`` keys.

A route names one ``service``, or a ``split`` over several by positive integer weight (95/5 for
a canary). ``match_first`` rules (header and/or cookie values) are tried first, in file order,
so a tester's ``X-Canary: 1`` always reaches v2. ``sticky`` draws the weighted pick from a hash
of a header or cookie instead of at random, so one user keeps seeing one version. A target's
service need not be registered yet (Consul/Redis/etcd, or the file's next reload, may add it):
until it is, it gets no traffic and its share goes to the route's other targets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from msa_gateway.errors import ConfigError
from msa_gateway.model import ServiceOptions

_TOKEN_CHARS = frozenset("!#$%&'*+.^_`|~-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
MAX_WEIGHT = 1_000_000
OptionsOf = Callable[[str, str], ServiceOptions]


class TargetModel(BaseModel):
    """One entry of a route's ``split:``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    service: str
    weight: Annotated[StrictInt, Field(ge=1, le=MAX_WEIGHT)]


class MatchModel(BaseModel):
    """One entry of a route's ``match_first:`` (header and cookie values must all match)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    header: dict[str, str] | None = None
    cookie: dict[str, str] | None = None
    service: str


class StickyModel(BaseModel):
    """A route's ``sticky:``: hash one header or one cookie."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    header: str | None = None
    cookie: str | None = None


class TargetsModel(BaseModel):
    """Where a route sends its requests: the fields ``RouteModel`` takes from here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    service: str | None = None  # or split:
    split: list[TargetModel] | None = None
    match_first: list[MatchModel] = Field(default_factory=list)
    sticky: StickyModel | None = None


@dataclass(frozen=True, slots=True)
class SplitTarget:
    """A service the route sends traffic to, with its weight (0 for a ``match_first``-only target)."""

    service: str
    weight: int
    options: ServiceOptions


@dataclass(frozen=True, slots=True)
class MatchRule:
    """A ``match_first`` rule: every header and cookie value must match (names lower case)."""

    headers: tuple[tuple[bytes, bytes], ...]
    cookies: tuple[tuple[bytes, bytes], ...]
    service: str
    options: ServiceOptions


@dataclass(frozen=True, slots=True)
class SplitConfig:
    """The validated split of one route."""

    targets: tuple[SplitTarget, ...]
    rules: tuple[MatchRule, ...]
    sticky_header: bytes | None = None
    sticky_cookie: bytes | None = None

    @property
    def total(self) -> int:
        """Return the sum of the weights."""
        return sum(t.weight for t in self.targets)

    def describe(self, registered: Callable[[str], bool]) -> dict[str, Any]:
        """Return what ``/health/`` shows: weights, shares among registered targets, rules, sticky key."""
        live = sum(t.weight for t in self.targets if registered(t.service))
        sticky = None
        if self.sticky_header is not None:
            sticky = {"header": self.sticky_header.decode()}
        elif self.sticky_cookie is not None:
            sticky = {"cookie": self.sticky_cookie.decode()}
        return {
            "targets": [
                {
                    "service": t.service,
                    "weight": t.weight,
                    "registered": registered(t.service),
                    "share": round(t.weight / live, 6) if live and registered(t.service) else 0.0,
                }
                for t in self.targets
            ],
            "match_first": [
                {
                    "header": {n.decode(): v.decode() for n, v in r.headers},
                    "cookie": {n.decode(): v.decode() for n, v in r.cookies},
                    "service": r.service,
                    "registered": registered(r.service),
                }
                for r in self.rules
            ],
            "sticky": sticky,
        }


def _name(raw: str, source: str, key: str, what: str) -> bytes:
    if not raw or len(raw) > 128 or not set(raw) <= _TOKEN_CHARS:
        raise ConfigError(source, key, f"{raw!r} is not a {what} name")
    return raw.encode("ascii")


def _value(raw: str, source: str, key: str) -> bytes:
    try:
        value = raw.encode("latin-1")
    except UnicodeEncodeError:
        raise ConfigError(source, key, "header and cookie values are latin-1 text") from None
    if any(c < 0x20 or c == 0x7F for c in value) or value != value.strip():
        raise ConfigError(source, key, "no control characters or surrounding spaces in a value")
    return value


def _pairs(
    values: dict[str, str], source: str, key: str, what: str, lower: bool
) -> tuple[tuple[bytes, bytes], ...]:
    pairs = []
    for raw, value in sorted(values.items()):
        name = _name(raw, source, f"{key}.{raw}", what)
        pairs.append((name.lower() if lower else name, _value(value, source, f"{key}.{raw}")))
    return tuple(pairs)


def _split(
    key: str, source: str, model: TargetsModel, options_of: OptionsOf
) -> tuple[tuple[SplitTarget, ...], tuple[MatchRule, ...]]:
    targets: list[SplitTarget] = []
    seen: dict[str, int] = {}
    if model.split is None:  # one service, and match_first rules in front of it
        assert model.service is not None
        targets.append(SplitTarget(model.service, 1, options_of(model.service, f"{key}.service")))
    for i, target in enumerate(model.split or ()):
        where = f"{key}.split.{i}"
        if target.service in seen:
            raise ConfigError(
                source, f"{where}.service", f"{target.service!r} is already split.{seen[target.service]}"
            )
        seen[target.service] = i
        targets.append(
            SplitTarget(target.service, target.weight, options_of(target.service, f"{where}.service"))
        )
    rules = []
    for i, rule in enumerate(model.match_first):
        where = f"{key}.match_first.{i}"
        if not rule.header and not rule.cookie:
            raise ConfigError(source, where, "give header: and/or cookie: values to match")
        headers = _pairs(rule.header or {}, source, f"{where}.header", "header", lower=True)
        cookies = _pairs(rule.cookie or {}, source, f"{where}.cookie", "cookie", lower=False)
        rules.append(MatchRule(headers, cookies, rule.service, options_of(rule.service, f"{where}.service")))
    return tuple(targets), tuple(rules)


def _sticky(key: str, source: str, model: TargetsModel) -> tuple[bytes | None, bytes | None]:
    sticky, where = model.sticky, f"{key}.sticky"
    if sticky is None:
        return None, None
    if model.split is None:
        raise ConfigError(source, where, "sticky needs a split: to choose from")
    if (sticky.header is None) == (sticky.cookie is None):
        raise ConfigError(source, where, "give one header: or one cookie: to hash")
    if sticky.header is not None:
        return _name(sticky.header, source, f"{where}.header", "header").lower(), None
    return None, _name(sticky.cookie or "", source, f"{where}.cookie", "cookie")


def parse_targets(
    key: str, source: str, model: TargetsModel, options_of: OptionsOf
) -> tuple[str, ServiceOptions, SplitConfig | None]:
    """Return a route's service, its options and its split (None for one plain ``service``).

    ``key`` is the route's ``routes.N``; ``options_of(service, key)`` raises for an unusable name.
    """
    if model.split is not None and model.service is not None:
        raise ConfigError(source, f"{key}.split", "give service: or split:, not both")
    if model.split is None and model.service is None:
        raise ConfigError(source, f"{key}.service", "Field required (or a split: over several services)")
    if model.split is None and not model.match_first and model.sticky is None:
        assert model.service is not None
        return model.service, options_of(model.service, f"{key}.service"), None
    if model.split is not None and not model.split:
        raise ConfigError(source, f"{key}.split", "list at least one {service, weight}")
    targets, rules = _split(key, source, model, options_of)
    split = SplitConfig(targets, rules, *_sticky(key, source, model))
    return targets[0].service, targets[0].options, split
