"""Verification keys and the algorithm families they belong to: the guard against key confusion.

Every algorithm belongs to exactly one key family (HS* to a shared secret, RS* and PS* to RSA,
each ES* to one elliptic curve, EdDSA to an OKP key), and a key is only ever used with an
algorithm of its own family. So a token that says ``HS256`` can never be checked with an RSA
public key used as an HMAC secret (the classic confusion attack), and ``none`` is never an
algorithm at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

SECRET = "oct"  # noqa: S105 - the JWK key type of shared secrets, not a password
RSA = "RSA"
OKP = "OKP"
ALGORITHM_FAMILY: dict[str, str] = {
    "HS256": SECRET,
    "HS384": SECRET,
    "HS512": SECRET,
    "RS256": RSA,
    "RS384": RSA,
    "RS512": RSA,
    "PS256": RSA,
    "PS384": RSA,
    "PS512": RSA,
    "ES256": "EC:secp256r1",
    "ES256K": "EC:secp256k1",
    "ES384": "EC:secp384r1",
    "ES512": "EC:secp521r1",
    "EdDSA": OKP,
}
MIN_RSA_BITS = 2048
_JWK_LOADERS: dict[str, Callable[[Any], Any]] = {
    "RSA": RSAAlgorithm.from_jwk,
    "EC": ECAlgorithm.from_jwk,
    "OKP": OKPAlgorithm.from_jwk,
}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey


@dataclass(frozen=True, slots=True, eq=False)
class VerifyKey:
    """One key a token may be verified with; ``alg`` set when the key is bound to one algorithm."""

    key: PublicKey | bytes
    family: str
    kid: str | None = None
    alg: str | None = None

    def fits(self, alg: str) -> bool:
        """Return whether a token signed with ``alg`` may be checked with this key."""
        return ALGORITHM_FAMILY.get(alg) == self.family and (self.alg is None or self.alg == alg)


def family_of(key: PublicKey | bytes) -> str:
    """Return the family of a public key or a secret."""
    if isinstance(key, bytes):
        return SECRET
    if isinstance(key, rsa.RSAPublicKey):
        return RSA
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC:{key.curve.name}"
    return OKP


def public_key_from_pem(data: bytes) -> PublicKey:
    """Load a PEM public key (RSA, EC, Ed25519, Ed448); ValueError for anything else."""
    key = load_pem_public_key(data)
    if not isinstance(
        key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
    ):
        raise ValueError(f"unsupported key type {type(key).__name__}")
    return key


def from_jwk(jwk: Any) -> VerifyKey | None:
    """Return the key of one JWKS entry; None for one the gateway must not or cannot use.

    Symmetric (``oct``) keys are never taken from a JWKS (a published secret is no secret), nor
    keys meant for encryption (``use: enc``); an ``alg`` the entry names binds the key to it.
    """
    if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
        return None
    loader = _JWK_LOADERS.get(str(jwk.get("kty")))
    kid, alg = jwk.get("kid"), jwk.get("alg")
    if loader is None or not (kid is None or isinstance(kid, str)):
        return None
    try:
        key = loader(jwk)
    except Exception:
        return None
    if not isinstance(key, PublicKey):  # a private key in a JWKS: use only its public half
        key = key.public_key()
    family = family_of(key)
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        return None
    if alg is not None and ALGORITHM_FAMILY.get(alg) != family:
        return None
    return VerifyKey(key, family, kid, alg)
