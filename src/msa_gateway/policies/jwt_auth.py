"""``jwt``: verify a bearer token (PyJWT) against static keys or the identity provider's JWKS.

Per request: take the token from ``Authorization: Bearer``, look its SHA-256 up in the optional
cache of verified tokens, else read the header's ``alg`` (which must be in the allowlist) and
``kid``, pick the keys of that algorithm's family (``jwt_keys``: no HS/RS confusion), verify
signature, ``exp``/``nbf`` (with leeway), ``iss``, ``aud`` and the required claims, then apply
the claim rules (403) and map claims to upstream headers. The client's own copies of those
headers are removed, so an identity header upstream always comes from a verified token.

Failures answer 401 with an RFC 6750 challenge: ``Bearer realm="..."`` alone when no token was
sent, plus ``error="invalid_token"`` and a fixed description when one did not verify. The
descriptions never echo the token or a claim value, and nothing here logs either.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import TYPE_CHECKING, Any

import jwt
import orjson

from msa_gateway.errors import InsufficientScope, Unauthorized
from msa_gateway.policies.credentials import add_upstream_headers, challenge, identity_value, take_header
from msa_gateway.policies.jwks import JwksCache
from msa_gateway.policies.jwt_config import JwtConfig
from msa_gateway.policies.jwt_keys import SECRET, VerifyKey, public_key_from_pem
from msa_gateway.policies.shared import SharedState

if TYPE_CHECKING:
    from collections.abc import Callable

    from msa_gateway.model import ServiceSpec
    from msa_gateway.policies.base import Reply
    from msa_gateway.proxy.request import ProxyRequest

Identity = tuple[str | None, tuple[tuple[bytes, bytes], ...]]  # consumer, headers for upstream

# Most specific first: ExpiredSignatureError is an InvalidTokenError, InvalidSignatureError a DecodeError.
_DESCRIPTIONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "the token expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidAudienceError, "the token is not meant for this audience"),
    (jwt.InvalidIssuerError, "the token's issuer is not accepted"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
    (jwt.InvalidAlgorithmError, "the token's algorithm is not allowed"),
    (jwt.DecodeError, "the token is malformed"),
)


def describe(exc: jwt.PyJWTError) -> str:
    """Return a fixed, safe description of why a token was refused."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"the token lacks the {exc.claim} claim"
    for kind, text in _DESCRIPTIONS:
        if isinstance(exc, kind):
            return text
    return "the token is not valid"


def unverified_header(token: bytes) -> dict[str, Any] | None:
    """Return the token's JOSE header to pick the key by; None when it is not one.

    Read here rather than with ``jwt.get_unverified_header``, which costs as much as a second
    full decode; PyJWT's own strict parsing still runs in ``jwt.decode``, which is told the one
    algorithm read here and refuses a token whose header says otherwise.
    """
    segment = token.split(b".", 1)[0]
    try:
        header = orjson.loads(base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error):
        return None
    return header if isinstance(header, dict) else None


def claim(claims: dict[str, Any], name: str) -> Any:
    """Return claim ``name``: a top-level key first, else a dotted path into nested objects."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


class TokenCache:
    """Verified tokens by SHA-256, each until its ``exp``; the oldest goes first when full."""

    __slots__ = ("entries", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: dict[bytes, tuple[float, Identity]] = {}

    def get(self, key: bytes, now: float) -> Identity | None:
        """Return the identity of a verified token, or None (unknown or expired)."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self.entries[key]
            return None
        return entry[1]

    def put(self, key: bytes, expires: float, identity: Identity) -> None:
        """Remember a verified token until ``expires`` (Unix time)."""
        entries = self.entries
        while len(entries) >= self.size:
            del entries[next(iter(entries))]
        entries[key] = (expires, identity)


class JwtAuth:
    """401 unless the request carries a token that verifies; 403 when a claim rule refuses it."""

    name = "jwt"
    __slots__ = ("cache", "config", "drop", "jwks", "keys", "missing", "now", "options", "scheme")

    def __init__(
        self,
        config: JwtConfig,
        jwks: JwksCache | None,
        cache: TokenCache | None,
        now: Callable[[], float],
    ) -> None:
        self.config = config
        self.jwks = jwks
        self.cache = cache
        self.now = now
        self.keys = tuple(
            VerifyKey(k.data if k.family == SECRET else public_key_from_pem(k.data), k.family, k.kid)
            for k in config.keys
        )
        self.drop = frozenset(h for _, h in config.claims_to_headers)
        self.missing = challenge("Bearer", config.realm)
        self.scheme = config.header == b"authorization"
        self.options: dict[str, Any] = {
            "require": list(config.required_claims),
            "verify_aud": bool(config.audience),
        }

    @classmethod
    def build(cls, config: JwtConfig, spec: ServiceSpec) -> JwtAuth:
        """Return the stage for one route, with the JWKS and token caches shared across snapshots."""
        shared = SharedState.of(spec)
        url = config.jwks_url
        jwks = (
            None
            if url is None
            else shared.get(
                ("jwks", url, config.jwks), lambda: JwksCache(url, config.jwks, shared), JwksCache
            )
        )
        size = config.token_cache
        cache = shared.get(("jwt_tokens", config), lambda: TokenCache(size), TokenCache) if size else None
        return cls(config, jwks, cache, shared.wall)

    async def __call__(self, request: ProxyRequest) -> Reply | None:
        """Verify the token and admit the request with its identity; raise 401/403 otherwise."""
        config = self.config
        raw, kept = take_header(request.headers, config.header, not config.forward_token, self.drop)
        token = self._token(raw)
        if token is None:
            raise Unauthorized("a bearer token is required", self.missing)
        cache = self.cache
        identity = None
        if cache is not None:
            digest = hashlib.sha256(token).digest()
            identity = cache.get(digest, self.now())
        if identity is None:
            claims = await self._verify(token)
            identity = self._identity(claims)
            exp = claims.get("exp")
            if cache is not None and isinstance(exp, int | float):
                cache.put(digest, float(exp), identity)
        request.headers = kept
        request.consumer = identity[0]
        if identity[1]:
            add_upstream_headers(request, identity[1])
        return None

    def _token(self, raw: bytes | None) -> bytes | None:
        if raw is None:
            return None
        scheme, _, rest = raw.strip().partition(b" ")
        if scheme.lower() == b"bearer":
            return rest.strip() or None
        return None if self.scheme else raw.strip() or None

    def _invalid(self, description: str) -> Unauthorized:
        ch = challenge("Bearer", self.config.realm, "invalid_token", description)
        return Unauthorized(description, ch, "invalid_token")

    async def _verify(self, token: bytes) -> dict[str, Any]:
        config = self.config
        header = unverified_header(token)
        if header is None:
            raise self._invalid("the token is malformed")
        alg, kid = header.get("alg"), header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise self._invalid("the token is malformed")
        if alg not in config.algorithms:
            raise self._invalid("the token's algorithm is not allowed")
        keys = [k for k in self.keys if k.fits(alg) and (kid is None or k.kid in (None, kid))]
        if not keys and self.jwks is not None:
            keys = [k for k in await self.jwks.keys_for(kid) if k.fits(alg)]
        if not keys:
            raise self._invalid("no known key matches the token's kid and algorithm")
        for key in keys:
            try:
                return jwt.decode(
                    token,
                    key.key,
                    algorithms=[alg],
                    audience=config.audience or None,
                    issuer=config.issuer or None,
                    leeway=config.leeway,
                    options=self.options,  # type: ignore[arg-type]
                )
            except jwt.InvalidSignatureError:
                continue  # the next key of the family (a secret being rotated, say)
            except jwt.PyJWTError as exc:
                raise self._invalid(describe(exc)) from None
        raise self._invalid("the token's signature does not verify")

    def _identity(self, claims: dict[str, Any]) -> Identity:
        config = self.config
        for name, allowed in config.claim_rules:
            value = claim(claims, name)
            held = value.split() if isinstance(value, str) else value if isinstance(value, list) else [value]
            if not any(isinstance(v, str | int) and str(v) in allowed for v in held):
                description = f"the token's {name} claim does not allow this request"
                ch = challenge("Bearer", config.realm, "insufficient_scope", description)
                raise InsufficientScope(description, ch)
        headers = []
        for name, header in config.claims_to_headers:
            value = identity_value(claim(claims, name))
            if value is not None:
                headers.append((header, value))
        consumer = None
        if config.consumer_claim is not None:
            found = claim(claims, config.consumer_claim)
            value = identity_value(found) if isinstance(found, str | int) else None
            consumer = None if value is None else value.decode("utf-8")
        return consumer, tuple(headers)
