"""The ``jwt`` block parsed into a frozen ``JwtConfig``; every mistake names its key.

Checked at start-up rather than per request: the ``algorithms`` allowlist (``none`` is refused,
so are names PyJWT does not know), that every static key serves at least one allowed algorithm
of its own family, that secrets are long enough for the HMAC they feed and RSA keys at least
2048 bits, and that a JWKS-only policy does not allow HS* (a JWKS never carries a secret).
Secrets come from the environment or a file, never from the YAML.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import rsa

from msa_gateway.policies.base import PolicyError
from msa_gateway.policies.credentials import DEFAULT_REALM, policy_header, realm
from msa_gateway.policies.jwks import JwksSettings
from msa_gateway.policies.jwt_keys import (
    ALGORITHM_FAMILY,
    MIN_RSA_BITS,
    SECRET,
    family_of,
    public_key_from_pem,
)
from msa_gateway.policies.parsing import block, strings

KEYS = {
    "algorithms",
    "keys",
    "jwks_url",
    "jwks",
    "issuer",
    "audience",
    "leeway",
    "required_claims",
    "claim_rules",
    "claims_to_headers",
    "consumer_claim",
    "header",
    "forward_token",
    "token_cache",
    "realm",
}
KEY_SOURCES = ("pem", "pem_file", "secret_env", "secret_file")
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
MAX_TOKEN_CACHE = 1_000_000


@dataclass(frozen=True, slots=True)
class StaticKey:
    """A configured key: PEM of a public key, or an HMAC secret (never shown in a repr)."""

    data: bytes = field(repr=False)
    family: str
    kid: str | None = None


@dataclass(frozen=True, slots=True)
class JwtConfig:
    """A parsed ``jwt`` block."""

    algorithms: tuple[str, ...]
    keys: tuple[StaticKey, ...] = ()
    jwks_url: str | None = None
    jwks: JwksSettings = field(default_factory=JwksSettings)
    issuer: tuple[str, ...] = ()
    audience: tuple[str, ...] = ()
    leeway: float = 30.0
    required_claims: tuple[str, ...] = ("exp",)
    claim_rules: tuple[tuple[str, frozenset[str]], ...] = ()
    claims_to_headers: tuple[tuple[str, bytes], ...] = ()
    consumer_claim: str | None = "sub"
    header: bytes = b"authorization"
    forward_token: bool = True
    token_cache: int = 0
    realm: str = DEFAULT_REALM


def _one_or_many(raw: Any, key: str) -> tuple[str, ...]:
    return (raw,) if isinstance(raw, str) and raw else strings(raw, key)


def _algorithms(raw: Any) -> tuple[str, ...]:
    if raw is None:
        raise PolicyError("algorithms", "required: the allowlist of algorithms, e.g. [RS256]")
    algs = _one_or_many(raw, "algorithms")
    for alg in algs:
        if alg.lower() == "none":
            raise PolicyError("algorithms", "'none' is never allowed: unsigned tokens prove nothing")
        if alg not in ALGORITHM_FAMILY:
            raise PolicyError(
                "algorithms", f"unknown algorithm {alg!r}; known: {', '.join(ALGORITHM_FAMILY)}"
            )
    return algs


def _read(item: dict[str, Any], source: str, where: str) -> bytes:
    value = item[source]
    if not isinstance(value, str) or not value:
        raise PolicyError(f"{where}.{source}", "must be a non-empty string")
    if source == "pem":
        return value.encode("ascii", "replace")
    if source == "secret_env":
        secret = os.environ.get(value)
        if secret is None:
            raise PolicyError(f"{where}.secret_env", f"the environment variable {value} is not set")
        return secret.encode("utf-8")
    try:
        data = Path(value).read_bytes()
    except OSError as exc:
        raise PolicyError(f"{where}.{source}", f"cannot read {value}: {exc.__class__.__name__}") from None
    return data.strip() if source == "secret_file" else data


def _static_key(raw: Any, i: int, algorithms: tuple[str, ...]) -> StaticKey:
    where = f"keys.{i}"
    item = block(raw, {"kid", *KEY_SOURCES}, where)
    sources = [s for s in KEY_SOURCES if s in item]
    if len(sources) != 1:
        raise PolicyError(where, f"give exactly one of {', '.join(KEY_SOURCES)}")
    kid = item.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid):
        raise PolicyError(f"{where}.kid", "must be a non-empty string")
    data = _read(item, sources[0], where)
    if sources[0].startswith("secret"):
        family = SECRET
        hmacs = [a for a in algorithms if a in _HMAC_MIN_BYTES]
        need = max((_HMAC_MIN_BYTES[a] for a in hmacs), default=0)
        if len(data) < need:
            raise PolicyError(where, f"the secret is shorter than {need} bytes ({', '.join(hmacs)} need it)")
    else:
        try:
            key = public_key_from_pem(data)
        except ValueError as exc:
            raise PolicyError(f"{where}.{sources[0]}", f"not a PEM public key: {exc}") from None
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
            raise PolicyError(
                where, f"the RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} are required"
            )
        family = family_of(key)
    if not any(ALGORITHM_FAMILY[a] == family for a in algorithms):
        raise PolicyError(
            where, f"no algorithm in 'algorithms' uses a {family} key (key confusion is refused)"
        )
    return StaticKey(data, family, kid)


def _jwks_url(raw: Any) -> str:
    parts = urlsplit(raw) if isinstance(raw, str) else None
    if parts is None or parts.scheme not in {"http", "https"} or not parts.hostname:
        raise PolicyError("jwks_url", "must be an http(s) URL")
    return str(raw)


def _jwks_settings(raw: Any) -> JwksSettings:
    item = block(raw, set(JwksSettings.__dataclass_fields__), "jwks")
    for key, value in item.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PolicyError(f"jwks.{key}", "must be a number of seconds")
    try:
        return JwksSettings(**item)
    except ValueError as exc:
        raise PolicyError("jwks", str(exc)) from None


def _claim_rules(raw: Any) -> tuple[tuple[str, frozenset[str]], ...]:
    if not isinstance(raw, dict):
        raise PolicyError("claim_rules", "must map a claim to the values it may hold")
    return tuple(
        (str(claim), frozenset(_one_or_many(values, f"claim_rules.{claim}"))) for claim, values in raw.items()
    )


def _claims_to_headers(raw: Any) -> tuple[tuple[str, bytes], ...]:
    if not isinstance(raw, dict):
        raise PolicyError("claims_to_headers", "must map a claim to a header name")
    pairs = tuple((str(c), policy_header(h, f"claims_to_headers.{c}")) for c, h in raw.items())
    if len({h for _, h in pairs}) != len(pairs):
        raise PolicyError("claims_to_headers", "two claims map to the same header")
    return pairs


def _required(raw: Any) -> tuple[str, ...]:
    return strings(raw, "required_claims") if raw != [] else ()


def _number(raw: Any, key: str, high: float) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 <= raw <= high:
        raise PolicyError(key, f"must be a number 0-{high:g}")
    return float(raw)


def parse(raw: Any) -> JwtConfig:
    """Parse a ``jwt`` block; raise ``PolicyError`` naming the key that is wrong."""
    raw = block(raw, KEYS)
    algorithms = _algorithms(raw.get("algorithms"))
    keys_raw = raw.get("keys", [])
    if not isinstance(keys_raw, list):
        raise PolicyError("keys", "must be a list of keys")
    keys = tuple(_static_key(item, i, algorithms) for i, item in enumerate(keys_raw))
    jwks_url = None if raw.get("jwks_url") is None else _jwks_url(raw["jwks_url"])
    if not keys and jwks_url is None:
        raise PolicyError("jwks_url", "set jwks_url or keys: there is no key to verify tokens with")
    if not keys and all(ALGORITHM_FAMILY[a] == SECRET for a in algorithms):
        raise PolicyError("algorithms", "a JWKS carries no HS* secret: allow RS*, PS*, ES* or EdDSA")
    forward = raw.get("forward_token", True)
    if not isinstance(forward, bool):
        raise PolicyError("forward_token", "must be true or false")
    consumer = raw.get("consumer_claim", "sub")
    if consumer is not None and (not isinstance(consumer, str) or not consumer):
        raise PolicyError("consumer_claim", "must be a claim name or null")
    cache = raw.get("token_cache", 0)
    if isinstance(cache, bool) or not isinstance(cache, int) or not 0 <= cache <= MAX_TOKEN_CACHE:
        raise PolicyError("token_cache", f"must be an integer 0-{MAX_TOKEN_CACHE} (0: off)")
    return JwtConfig(
        algorithms=algorithms,
        keys=keys,
        jwks_url=jwks_url,
        jwks=_jwks_settings(raw.get("jwks", {})),
        issuer=() if raw.get("issuer") is None else _one_or_many(raw["issuer"], "issuer"),
        audience=() if raw.get("audience") is None else _one_or_many(raw["audience"], "audience"),
        leeway=_number(raw.get("leeway", 30), "leeway", 3600),
        required_claims=_required(raw.get("required_claims", ["exp"])),
        claim_rules=_claim_rules(raw.get("claim_rules", {})),
        claims_to_headers=_claims_to_headers(raw.get("claims_to_headers", {})),
        consumer_claim=consumer,
        header=policy_header(raw.get("header", "Authorization"), "header"),
        forward_token=forward,
        token_cache=cache,
        realm=realm(raw.get("realm", DEFAULT_REALM)),
    )
