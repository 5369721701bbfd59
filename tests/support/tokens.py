"""Signing keys, tokens and a real JWKS endpoint for the authentication tests.

``JwksServer`` is an aiohttp.web app on 127.0.0.1 that publishes whatever keys a test puts in
it, counts the fetches it answers (the server side is the truth about how often the gateway
asks), can be taken "down" (503) and can hold its answer until released.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "https://idp.test/"
AUDIENCE = "orders"


@dataclass
class SigningKey:
    """A private key, its ``kid`` and the algorithm it signs with."""

    private: Any
    kid: str
    alg: str

    def public_pem(self) -> str:
        return str(
            self.private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            data = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            data = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            data = OKPAlgorithm.to_jwk(public, as_dict=True)
        return {**data, "kid": self.kid, "use": "sig", "alg": self.alg}

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        return jwt.encode(claims, self.private, algorithm=self.alg, headers={"kid": self.kid, **header})


def rsa_key(kid: str, alg: str = "RS256") -> SigningKey:
    return SigningKey(rsa.generate_private_key(public_exponent=65537, key_size=2048), kid, alg)


def ec_key(kid: str, alg: str = "ES256") -> SigningKey:
    curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}[alg]
    return SigningKey(ec.generate_private_key(curve), kid, alg)


def ed_key(kid: str) -> SigningKey:
    return SigningKey(ed25519.Ed25519PrivateKey.generate(), kid, "EdDSA")


def claims(**over: Any) -> dict[str, Any]:
    """Return valid claims for ``ISSUER``/``AUDIENCE``, expiring in 5 minutes, with ``over`` applied."""
    now = int(time.time())
    base: dict[str, Any] = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def hs_token(secret: str, alg: str = "HS256", **over: Any) -> str:
    return jwt.encode(claims(**over), secret, algorithm=alg)


def forge_hs256(secret: bytes, payload: dict[str, Any], kid: str | None = None) -> str:
    """Sign by hand (PyJWT refuses a PEM as an HMAC secret, an attacker does not)."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
    signing_input = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(payload).encode())
    return (signing_input + b"." + b64(hmac.new(secret, signing_input, hashlib.sha256).digest())).decode()


@dataclass
class JwksServer:
    """A real JWKS endpoint: ``url`` serves ``keys`` with ``cache_control``; ``fetches`` counts answers."""

    keys: list[SigningKey] = field(default_factory=list)
    cache_control: str | None = "max-age=300"
    down: bool = False
    hold: asyncio.Event | None = None  # when set to an Event, answers wait for it
    fetches: int = 0
    url: str = ""
    _runner: web.AppRunner | None = None

    async def _serve(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.hold is not None:
            await self.hold.wait()
        if self.down:
            return web.Response(status=503, text="down")
        headers = {"Cache-Control": self.cache_control} if self.cache_control else {}
        return web.json_response({"keys": [k.jwk() for k in self.keys]}, headers=headers)

    async def start(self) -> JwksServer:
        app = web.Application()
        app.router.add_get("/.well-known/jwks.json", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
