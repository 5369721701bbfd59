"""JWKS entries the gateway takes or skips, key families, and the JWKS TTL and backoff rules."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from msa_gateway.policies.jwks import JwksSettings
from msa_gateway.policies.jwt_keys import RSA, SECRET, from_jwk
from msa_gateway.policies.shared import SharedState
from tests.support.tokens import ec_key, ed_key, rsa_key

RSA_KEY = rsa_key("r")


def test_signing_keys_of_every_family_are_taken_with_their_family() -> None:
    for key, family in [(RSA_KEY, RSA), (ec_key("e", "ES512"), "EC:secp521r1"), (ed_key("d"), "OKP")]:
        found = from_jwk(key.jwk())
        assert found is not None and found.family == family and found.kid == key.kid
        assert found.fits(key.alg)


@pytest.mark.parametrize(
    "jwk",
    [
        {
            "kty": "oct",
            "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA",
            "kid": "s",
        },  # a published secret
        {**RSA_KEY.jwk(), "use": "enc"},
        {**RSA_KEY.jwk(), "alg": "HS256"},  # an alg outside the key's family
        {**RSA_KEY.jwk(), "n": "!!"},  # malformed
        {"kty": "XYZ"},
        "not a dict",
    ],
)
def test_unusable_jwks_entries_are_skipped(jwk: Any) -> None:
    assert from_jwk(jwk) is None


def test_a_small_rsa_key_in_a_jwks_is_skipped() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    assert from_jwk({**RSAAlgorithm.to_jwk(small, as_dict=True), "kid": "small"}) is None


def test_a_key_bound_to_an_alg_fits_only_that_alg() -> None:
    key = from_jwk({**RSA_KEY.jwk(), "alg": "PS256"})
    assert key is not None and key.fits("PS256") and not key.fits("RS256") and not key.fits("HS256")
    unbound = from_jwk({k: v for k, v in RSA_KEY.jwk().items() if k != "alg"})
    assert unbound is not None and unbound.fits("RS512") and unbound.fits("PS384")
    assert not unbound.fits("ES256") and not unbound.fits("none") and unbound.family != SECRET


@pytest.mark.parametrize(
    ("header", "ttl"),
    [
        ("max-age=600", 600),
        ('public, max-age="90", must-revalidate', 90),
        ("max-age=1", 60),  # bounded below
        ("max-age=9999999", 86400),  # bounded above
        ("no-cache", 60),
        ("private", 300),
        (None, 300),
    ],
)
def test_ttl_from_cache_control(header: str | None, ttl: float) -> None:
    assert JwksSettings().ttl(header) == ttl


def test_backoff_doubles_from_the_refetch_interval_to_the_maximum() -> None:
    settings = JwksSettings(refetch_interval=10, max_backoff=60)
    assert [settings.backoff(n) for n in range(1, 6)] == [10, 20, 40, 60, 60]
    assert settings.backoff(10_000) == 60


def test_the_shared_store_returns_one_object_per_key_and_stays_bounded() -> None:
    shared = SharedState(limit=2)
    first = shared.get("a", list, list)
    assert shared.get("a", list, list) is first
    shared.get("b", list, list)
    shared.get("c", list, list)
    assert len(shared) == 2 and shared.get("a", list, list) is not first
