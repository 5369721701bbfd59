"""``cors``: cross-origin requests answered per service or route by the gateway.

A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered here
and never forwarded: 204 with the allow headers, or a 403 JSON error naming what is not allowed.
Every other response of the route (the instance's, and the gateway's own errors such as 401, 413
or 429) gets ``Access-Control-Allow-Origin`` and friends when the origin is allowed, so a browser
can read it; the instance's own ``Access-Control-*`` headers are dropped (the gateway owns CORS
on a route with this policy). ``Vary: Origin`` is sent on every response whose CORS headers depend
on the origin, also when the request had none, so a cache never serves one origin's answer to
another. ``*`` is never sent together with credentials: that combination is a config error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from msa_gateway.errors import error_body
from msa_gateway.policies.base import ConfigStage, PolicyError, Reply
from msa_gateway.policies.parsing import block, header_name, number, strings

if TYPE_CHECKING:
    from msa_gateway.proxy.request import Headers, ProxyRequest

DEFAULT_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
SAFELISTED = frozenset({b"accept", b"accept-language", b"content-language", b"content-type"})
KEYS = {"allow_origins", "allow_methods", "allow_headers", "expose_headers", "max_age", "allow_credentials"}


@dataclass(frozen=True, slots=True)
class CorsConfig:
    """The parsed ``cors`` block."""

    any_origin: bool
    origins: frozenset[bytes]  # exact, lower-case ("https://app.example.com")
    wildcards: tuple[tuple[bytes, bytes], ...]  # ("https://", ".example.com") for "https://*.example.com"
    methods: frozenset[str]
    headers: frozenset[bytes] | None  # None: any header the preflight asks for
    expose: tuple[bytes, ...]
    max_age: int | None
    credentials: bool

    def allows(self, origin: bytes) -> bool:
        """Return whether ``origin`` is on the allowlist (wildcards match one or more subdomain labels)."""
        if self.any_origin:
            return True
        origin = origin.lower()
        if origin in self.origins:
            return True
        return any(
            origin.startswith(scheme) and origin.endswith(suffix) and len(origin) > len(scheme) + len(suffix)
            for scheme, suffix in self.wildcards
        )


def _origin(raw: str, key: str) -> tuple[bytes | None, tuple[bytes, bytes] | None]:
    scheme, sep, host = raw.lower().partition("://")
    if not sep or scheme not in {"http", "https"} or not host or "/" in host or " " in host:
        raise PolicyError(
            key, f"{raw!r} is not an origin like https://app.example.com or https://*.example.com"
        )
    if host.startswith("*."):
        if "*" in host[2:] or not host[2:]:
            raise PolicyError(key, f"{raw!r}: a wildcard is one leading '*.' label")
        return None, (f"{scheme}://".encode(), host[1:].encode())
    if "*" in host:
        raise PolicyError(key, f"{raw!r}: a wildcard is one leading '*.' label")
    return raw.lower().encode(), None


def parse(raw: Any) -> CorsConfig:
    """Parse the ``cors`` block."""
    data = block(raw, KEYS)
    if "allow_origins" not in data:
        raise PolicyError("allow_origins", "required (a list of origins, or ['*'])")
    origins, wildcards, any_origin = set(), [], False
    for i, item in enumerate(strings(data["allow_origins"], "allow_origins")):
        if item == "*":
            any_origin = True
            continue
        exact, wild = _origin(item, f"allow_origins.{i}")
        if exact is not None:
            origins.add(exact)
        if wild is not None:
            wildcards.append(wild)
    credentials = data.get("allow_credentials", False)
    if not isinstance(credentials, bool):
        raise PolicyError("allow_credentials", "must be true or false")
    if credentials and any_origin:
        raise PolicyError("allow_origins", "'*' cannot be combined with allow_credentials: list the origins")
    methods = strings(data.get("allow_methods", list(DEFAULT_METHODS)), "allow_methods")
    raw_headers = strings(data.get("allow_headers", []), "allow_headers")
    headers = (
        None
        if "*" in raw_headers
        else frozenset(header_name(h, f"allow_headers.{i}") for i, h in enumerate(raw_headers))
    )
    expose = strings(data.get("expose_headers", []), "expose_headers")
    if "*" in expose and credentials:
        raise PolicyError("expose_headers", "'*' means no header at all with allow_credentials: list them")
    return CorsConfig(
        any_origin=any_origin,
        origins=frozenset(origins),
        wildcards=tuple(wildcards),
        methods=frozenset(m.upper() for m in methods),
        headers=headers,
        expose=tuple(h.encode() if h == "*" else header_name(h, "expose_headers") for h in expose),
        max_age=number(data.get("max_age", 600), "max_age", 0, 86400),
        credentials=credentials,
    )


def _origin_of(headers: Headers) -> bytes | None:
    for name, value in headers:
        if name == b"origin":
            return value
    return None


class _CorsBase(ConfigStage):
    """What both halves of the policy derive from its config, once per route."""

    name = "cors"
    __slots__ = ("allow_methods", "expose", "max_age", "vary")
    config: CorsConfig

    def __init__(self, config: CorsConfig) -> None:
        super().__init__(config)
        self.allow_methods = ", ".join(sorted(config.methods)).encode()
        self.expose = b", ".join(config.expose)
        self.max_age = None if config.max_age is None else str(config.max_age).encode()
        # With any origin and no credentials the answer is the same for every origin: no Vary needed.
        self.vary = not (config.any_origin and not config.credentials)

    def _allow_origin(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        out = [(b"access-control-allow-origin", origin if self.vary else b"*")]
        if self.config.credentials:
            out.append((b"access-control-allow-credentials", b"true"))
        return out


class CorsPreflight(_CorsBase):
    """The request stage: answer a preflight here, pass every other request."""

    __slots__ = ()

    async def __call__(self, request: ProxyRequest) -> Reply | None:
        """Answer a preflight; pass every other request."""
        if request.method != "OPTIONS":
            return None
        origin = wanted = asked = None
        for name, value in request.headers:
            if name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                wanted = value
            elif name == b"access-control-request-headers":
                asked = value
        if origin is None or wanted is None:
            return None  # a plain OPTIONS request: forwarded
        return self._preflight(request, origin, wanted.decode("latin-1"), asked)

    def _preflight(self, request: ProxyRequest, origin: bytes, method: str, asked: bytes | None) -> Reply:
        config = self.config
        vary = (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
        names = [h.strip().lower() for h in asked.split(b",") if h.strip()] if asked else []
        refused = None
        if not config.allows(origin):
            refused = "the origin is not allowed"
        elif method not in config.methods:
            refused = f"the method {method} is not allowed"
        elif config.headers is not None:
            extra = [n for n in names if n not in config.headers and n not in SAFELISTED]
            if extra:
                refused = f"the header {extra[0].decode('latin-1')} is not allowed"
        if refused is not None:
            body = error_body(403, "cors_forbidden", refused, request.request_id)
            return Reply(403, ((b"content-type", b"application/json"), vary), body)
        headers = [*self._allow_origin(origin), (b"access-control-allow-methods", self.allow_methods), vary]
        if names:
            headers.append((b"access-control-allow-headers", b", ".join(names)))
        if self.max_age is not None:
            headers.append((b"access-control-max-age", self.max_age))
        return Reply(204, tuple(headers))


class CorsResponse(_CorsBase):
    """The response stage: CORS headers on every answer of the route, instance's or gateway's."""

    __slots__ = ()

    def __call__(self, request: ProxyRequest, status: int, headers: Headers) -> Headers:
        """Replace the instance's CORS headers with the gateway's; add ``Vary: Origin``."""
        del status
        out = [(n, v) for n, v in headers if not n.startswith(b"access-control-")]
        origin = _origin_of(request.headers)
        if origin is not None and self.config.allows(origin):
            out.extend(self._allow_origin(origin))
            if self.expose:
                out.append((b"access-control-expose-headers", self.expose))
        if self.vary and not _varies_on_origin(out):
            out.append((b"vary", b"Origin"))
        return out


def _varies_on_origin(headers: Headers) -> bool:
    for name, value in headers:
        if name == b"vary":
            tokens = {t.strip().lower() for t in value.split(b",")}
            if b"origin" in tokens or b"*" in tokens:
                return True
    return False
