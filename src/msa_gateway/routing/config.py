"""The ``routes:`` list of the YAML file: validation, per-route options and conflict checks.

A route matches by host (exact, or ``*.example.com`` for any subdomain), path prefix (whole
segments), methods and header values, and sends the request to a service (or splits it over
several, ``routing/split.py``), optionally stripping the prefix or rewriting the path. Which
route wins is decided by specificity, never by order:

    1. host: an exact host, then a wildcard host (longer suffix first), then routes without host;
    2. the longer ``path_prefix``;
    3. a route with ``methods`` over one without;
    4. more header matches over fewer.

Two routes that tie on all four and can match the same request (same host and prefix,
overlapping methods, header values that do not contradict) are a start-up error naming both,
as is a route no request can reach (a prefix under one of the gateway's own endpoints).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Annotated, Any

from pydantic import ConfigDict, Field

from msa_gateway.errors import ConfigError
from msa_gateway.model import OWN_PATHS, ServiceOptions
from msa_gateway.policies.base import PolicyError
from msa_gateway.policies.chain import merge_policies
from msa_gateway.routing.split import SplitConfig, TargetsModel, parse_targets

_PREFIX = re.compile(r"^/(?:[A-Za-z0-9._~!$&'()*+,;=:@-]+(?:/[A-Za-z0-9._~!$&'()*+,;=:@-]+)*)?/?$")
_HOST = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9]([a-z0-9-]{0,62}))*$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
OWN_PREFIXES = OWN_PATHS


class RouteModel(TargetsModel):
    """One entry of ``routes:`` as written (validated by pydantic, checked further below)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    host: str | None = None
    path_prefix: str = "/"
    methods: list[str] | None = None
    headers: dict[str, str | None] | None = None
    strip_prefix: bool = False
    rewrite: dict[str, Any] | None = None
    policies: dict[str, Any] | None = None
    max_body_size: Annotated[int, Field(ge=0)] | None = None


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """One validated route; ``options`` are its service's with the route's policies merged over them."""

    key: str  # "routes.3": where it is in the file
    name: str
    service: str
    host: str | None  # lower case, no port; "*.example.com" for a wildcard
    prefix: bytes  # no trailing slash, except "/"
    methods: frozenset[str] | None
    headers: tuple[tuple[bytes, bytes | None], ...]  # (name, value); None: the header must be present
    strip_prefix: bool
    options: ServiceOptions
    split: SplitConfig | None = None  # several targets (split:, match_first:); ``service`` is the first

    @property
    def specificity(self) -> tuple[int, int, int, bool, int]:
        """Return the sort key: bigger is more specific (see the module docstring)."""
        host = self.host or ""
        kind = 0 if not host else 1 if host.startswith("*.") else 2
        return (kind, len(host), len(self.prefix), self.methods is not None, len(self.headers))

    def ties_with(self, other: RouteConfig) -> bool:
        """Return whether both routes rank the same and some request would match both."""
        if self.specificity != other.specificity or (self.host, self.prefix) != (other.host, other.prefix):
            return False
        if self.methods is not None and other.methods is not None and not self.methods & other.methods:
            return False
        mine = dict(self.headers)  # contradicting values (X-V: 1 and X-V: 2) never meet in one request
        return all(mine.get(n) is None or v is None or mine[n] == v for n, v in other.headers)


def _fail(source: str, key: str, reason: str) -> ConfigError:
    return ConfigError(source, key, reason)


def _prefix(raw: str, source: str, key: str) -> bytes:
    if not _PREFIX.match(raw) or "/../" in f"{raw}/" or "/./" in f"{raw}/":
        raise _fail(source, key, f"{raw!r} is not a path prefix ('/' then segments; no '..', '%' or spaces)")
    first = raw.strip("/").split("/", 1)[0]
    if first in OWN_PREFIXES:
        raise _fail(source, key, f"shadowed: /{first} is a gateway endpoint, no request reaches this route")
    return raw.rstrip("/").encode("ascii") or b"/"


def _route(model: RouteModel, i: int, source: str, options_for: Any, service_name_error: Any) -> RouteConfig:
    key = f"routes.{i}"
    host = None
    if model.host is not None:
        host = model.host.lower().rsplit(":", 1)[0] if model.host.count(":") == 1 else model.host.lower()
        if not _HOST.match(host):
            raise _fail(source, f"{key}.host", f"{model.host!r} is not a host name (or *.domain)")
    prefix = _prefix(model.path_prefix, source, f"{key}.path_prefix")
    methods = None
    if model.methods is not None:
        if not model.methods or not all(_TOKEN.match(m) for m in model.methods):
            raise _fail(source, f"{key}.methods", "must be a non-empty list of HTTP methods")
        methods = frozenset(m.upper() for m in model.methods)
    headers = []
    for hname, value in sorted((model.headers or {}).items()):
        if not _TOKEN.match(hname):
            raise _fail(source, f"{key}.headers.{hname}", "not a header name")
        headers.append((hname.lower().encode(), None if value in (None, "*") else str(value).encode()))
    if model.strip_prefix and model.rewrite is not None:
        raise _fail(source, f"{key}.rewrite", "give strip_prefix or rewrite, not both")
    if model.strip_prefix and prefix == b"/":
        raise _fail(source, f"{key}.strip_prefix", "path_prefix '/' leaves nothing to strip")
    blocks = dict(model.policies or {})
    if model.rewrite is not None:
        if "path_rewrite" in blocks:
            raise _fail(source, f"{key}.rewrite", "give rewrite or policies.path_rewrite, not both")
        blocks["path_rewrite"] = model.rewrite

    def options_of(service: str, where: str) -> ServiceOptions:
        """Return ``service``'s options with the route's blocks over them (each split target has its own)."""
        why = service_name_error(service)
        if why:
            raise _fail(source, where, why)
        options: ServiceOptions = options_for(service)
        try:
            policies = merge_policies(options.policies, blocks)
        except PolicyError as exc:
            at = "rewrite" if exc.key.startswith("path_rewrite") and model.rewrite is not None else "policies"
            sub = exc.key.removeprefix("path_rewrite.") if at == "rewrite" else exc.key
            raise _fail(source, f"{key}.{at}.{sub}", exc.reason) from None
        if model.max_body_size is not None:
            options = replace(options, max_body_size=model.max_body_size)
        return replace(options, policies=policies)

    service, options, split = parse_targets(key, source, model, options_of)
    return RouteConfig(
        key=key,
        name=model.name or key,
        service=service,
        host=host,
        prefix=prefix,
        methods=methods,
        headers=tuple(headers),
        strip_prefix=model.strip_prefix,
        options=options,
        split=split,
    )


def parse_routes(
    models: list[RouteModel], source: str, options_for: Any, service_name_error: Any
) -> tuple[RouteConfig, ...]:
    """Validate every route, merge its options, and refuse ties and duplicates (first one named)."""
    routes: list[RouteConfig] = []
    names: dict[str, str] = {}
    for i, model in enumerate(models):
        route = _route(model, i, source, options_for, service_name_error)
        if route.name in names:
            raise _fail(
                source, f"routes.{i}.name", f"{route.name!r} is already the name of {names[route.name]}"
            )
        names[route.name] = route.key
        for earlier in routes:
            if earlier.ties_with(route):
                raise _fail(
                    source,
                    route.key,
                    f"conflicts with {earlier.key} ({earlier.name}): same host, path_prefix and rank,"
                    " and a request can match both; make one more specific (methods, headers)",
                )
        routes.append(route)
    return tuple(routes)
