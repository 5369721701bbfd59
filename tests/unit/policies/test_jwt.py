"""``jwt`` with static keys: parsing, algorithm families, claim checks, claim rules, headers and the token cache."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
import yaml

from msa_gateway.errors import ConfigError
from msa_gateway.policies import jwt_config
from msa_gateway.policies.base import PolicyError
from msa_gateway.policies.jwt_auth import JwtAuth, TokenCache
from msa_gateway.proxy.handler import ProxyApp
from msa_gateway.proxy.request import ProxyRequest
from msa_gateway.settings import parse_config
from tests.support.fake_upstream import Answer, FakeUpstream, call, instances, make_runtime
from tests.support.tokens import (
    AUDIENCE,
    ISSUER,
    SigningKey,
    claims,
    ec_key,
    ed_key,
    forge_hs256,
    hs_token,
    rsa_key,
)

SECRET = "s" * 64


@pytest.fixture(scope="module")
def rsa() -> SigningKey:
    return rsa_key("r1")


def gateway(**block: Any) -> tuple[ProxyApp, FakeUpstream]:
    rt, up, _ = make_runtime(policies={"jwt": block})
    rt.apply(instances(9001))
    return ProxyApp(rt), up


def rsa_block(key: SigningKey, **more: Any) -> dict[str, Any]:
    return {
        "algorithms": ["RS256"],
        "keys": [{"pem": key.public_pem()}],
        "issuer": ISSUER,
        "audience": AUDIENCE,
        **more,
    }


async def send(app: ProxyApp, token: str | None, scheme: str = "Bearer") -> Answer:
    headers = [(b"host", b"gw")]
    if token is not None:
        headers.append((b"authorization", f"{scheme} {token}".encode()))
    return await call(app, headers=headers)


def invalid(answer: Answer, description: str) -> None:
    assert answer.status == 401 and answer.json()["error"] == "invalid_token"
    expected = f'Bearer realm="msa-gateway", error="invalid_token", error_description="{description}"'
    assert answer.headers[b"www-authenticate"].decode() == expected


@pytest.mark.parametrize(
    ("block", "key", "reason"),
    [
        ({"keys": [{"secret_env": "S"}]}, "algorithms", "required"),
        ({"algorithms": ["none"], "keys": [{"secret_env": "S"}]}, "algorithms", "'none' is never allowed"),
        ({"algorithms": ["HS1"], "keys": [{"secret_env": "S"}]}, "algorithms", "unknown algorithm"),
        ({"algorithms": ["RS256"]}, "jwks_url", "no key"),
        ({"algorithms": ["HS256"], "jwks_url": "https://idp/jwks"}, "algorithms", "no HS* secret"),
        ({"algorithms": ["RS256"], "jwks_url": "ftp://idp/jwks"}, "jwks_url", "http(s) URL"),
        ({"algorithms": ["RS256"], "keys": [{"secret_env": "S"}]}, "keys.0", "key confusion is refused"),
        ({"algorithms": ["HS512"], "keys": [{"secret_env": "SHORT"}]}, "keys.0", "shorter than 64 bytes"),
        ({"algorithms": ["HS256"], "keys": [{"secret_env": "MISSING_ENV"}]}, "keys.0.secret_env", "not set"),
        ({"algorithms": ["HS256"], "keys": [{"secret": "inline"}]}, "keys.0.secret", "unknown key"),
        ({"algorithms": ["HS256"], "keys": [{"secret_env": "S", "pem": "x"}]}, "keys.0", "exactly one"),
        ({"algorithms": ["RS256"], "keys": [{"pem": "not a pem"}]}, "keys.0.pem", "not a PEM public key"),
        (
            {"algorithms": ["RS256"], "keys": [{"pem_file": "/nonexistent.pem"}]},
            "keys.0.pem_file",
            "cannot read",
        ),
        ({"algorithms": ["HS256"], "keys": [{"secret_env": "S"}], "leeway": -1}, "leeway", "0-3600"),
        (
            {"algorithms": ["HS256"], "keys": [{"secret_env": "S"}], "token_cache": "big"},
            "token_cache",
            "integer",
        ),
        (
            {"algorithms": ["RS256"], "jwks_url": "https://idp/j", "jwks": {"min_ttl": 10, "max_ttl": 5}},
            "jwks",
            "max_ttl must be >= min_ttl",
        ),
        (
            {"algorithms": ["RS256"], "jwks_url": "https://idp/j", "jwks": {"ttl": 1}},
            "jwks.ttl",
            "unknown key",
        ),
        (
            {"algorithms": ["HS256"], "keys": [{"secret_env": "S"}], "claims_to_headers": {"sub": "Host"}},
            "claims_to_headers.sub",
            "gateway owns",
        ),
    ],
)
def test_parse_errors_name_the_key(
    monkeypatch: pytest.MonkeyPatch, block: dict[str, Any], key: str, reason: str
) -> None:
    monkeypatch.setenv("S", SECRET)
    monkeypatch.setenv("SHORT", "x" * 40)
    with pytest.raises(PolicyError) as info:
        jwt_config.parse(block)
    assert info.value.key == key and reason in info.value.reason


def test_a_bad_block_fails_start_up_with_file_and_full_key() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {"defaults": {"policies": {"jwt": {"algorithms": ["none"], "jwks_url": "https://i/j"}}}}, "g.yaml"
        )
    assert (info.value.source, info.value.key) == ("g.yaml", "defaults.policies.jwt.algorithms")


def test_a_small_rsa_key_is_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa as crypto_rsa

    small = SigningKey(crypto_rsa.generate_private_key(public_exponent=65537, key_size=1024), "s", "RS256")
    with pytest.raises(PolicyError, match="1024 bits"):
        jwt_config.parse({"algorithms": ["RS256"], "keys": [{"pem": small.public_pem()}]})


def test_secrets_come_from_files_and_never_show_in_a_repr(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "secret").write_text(SECRET + "\n")
    config = jwt_config.parse({"algorithms": ["HS256"], "keys": [{"secret_file": str(tmp_path / "secret")}]})
    assert config.keys[0].data == SECRET.encode() and SECRET not in repr(config)


async def test_a_valid_token_passes_with_claims_mapped_to_headers(rsa: SigningKey) -> None:
    app, up = gateway(
        **rsa_block(rsa, claims_to_headers={"sub": "X-User-ID", "roles": "X-Roles", "org.id": "X-Org"})
    )
    token = rsa.sign(claims(roles=["a", "b"], org={"id": 7}))
    spoof = [(b"host", b"gw"), (b"x-user-id", b"mallory"), (b"authorization", f"Bearer {token}".encode())]
    answer = await call(app, headers=spoof)
    assert answer.status == 200
    sent = up.calls[-1].headers
    assert [v for k, v in sent if k == b"x-user-id"] == [b"alice"]
    assert (b"x-roles", b"a,b") in sent and (b"x-org", b"7") in sent
    assert (b"authorization", f"Bearer {token}".encode()) in sent  # forwarded by default


async def test_forward_token_false_strips_it(rsa: SigningKey) -> None:
    app, up = gateway(**rsa_block(rsa, forward_token=False))
    assert (await send(app, rsa.sign(claims()))).status == 200
    assert all(k != b"authorization" for k, _ in up.calls[-1].headers)


async def test_no_token_is_401_with_a_bare_challenge(rsa: SigningKey) -> None:
    app, up = gateway(**rsa_block(rsa, realm="orders"))
    for answer in (await send(app, None), await send(app, "abc", scheme="Basic")):
        assert answer.status == 401 and answer.json()["error"] == "unauthorized"
        assert answer.headers[b"www-authenticate"] == b'Bearer realm="orders"'
    assert not up.calls


@pytest.mark.parametrize(
    ("over", "description"),
    [
        ({"exp": -120}, "the token expired"),  # exp and nbf: seconds from now, taken when the test runs
        ({"nbf": 120}, "the token is not valid yet"),
        ({"iss": "https://evil.test/"}, "the token's issuer is not accepted"),
        ({"aud": "payments"}, "the token is not meant for this audience"),
        ({"exp": None}, "the token lacks the exp claim"),
    ],
)
async def test_claim_checks_refuse_with_invalid_token(
    rsa: SigningKey, over: dict[str, Any], description: str
) -> None:
    app, up = gateway(**rsa_block(rsa, leeway=30))
    now = int(time.time())
    over = {k: now + v if k in {"exp", "nbf"} and v is not None else v for k, v in over.items()}
    invalid(await send(app, rsa.sign(claims(**over))), description)
    assert not up.calls


async def test_leeway_accepts_a_token_that_expired_a_moment_ago(rsa: SigningKey) -> None:
    app, _ = gateway(**rsa_block(rsa, leeway=60))
    assert (
        await send(app, rsa.sign(claims(exp=int(time.time()) - 10, nbf=int(time.time()) + 10)))
    ).status == 200


async def test_a_wrong_signature_and_garbage_are_invalid(rsa: SigningKey) -> None:
    app, _ = gateway(**rsa_block(rsa))
    other = rsa_key("r1")
    invalid(await send(app, other.sign(claims())), "the token's signature does not verify")
    invalid(await send(app, "not.a.token"), "the token is malformed")


async def test_alg_none_and_algorithms_outside_the_allowlist_are_refused(rsa: SigningKey) -> None:
    app, _ = gateway(**rsa_block(rsa))
    unsigned = pyjwt.encode(claims(), "", algorithm="none")
    invalid(await send(app, unsigned), "the token's algorithm is not allowed")
    ps = SigningKey(rsa.private, "r1", "PS256")
    invalid(await send(app, ps.sign(claims())), "the token's algorithm is not allowed")


async def test_hs_rs_key_confusion_is_refused(rsa: SigningKey, monkeypatch: pytest.MonkeyPatch) -> None:
    """The classic attack: HS256 signed with the RSA public key's PEM as the secret."""
    monkeypatch.setenv("S", SECRET)
    block = rsa_block(rsa, algorithms=["RS256", "HS256"])
    block["keys"].append({"secret_env": "S"})
    app, up = gateway(**block)
    forged = forge_hs256(rsa.public_pem().encode(), claims(), kid="r1")
    invalid(await send(app, forged), "the token's signature does not verify")
    assert (await send(app, hs_token(SECRET))).status == 200  # the real secret still works
    assert (await send(app, rsa.sign(claims()))).status == 200 and len(up.calls) == 2


async def test_a_kid_picks_its_key_and_other_families_work(monkeypatch: pytest.MonkeyPatch) -> None:
    es, ed = ec_key("e1", "ES384"), ed_key("d1")
    app, _ = gateway(
        algorithms=["ES384", "EdDSA"],
        keys=[{"kid": "e1", "pem": es.public_pem()}, {"kid": "d1", "pem": ed.public_pem()}],
    )
    assert (await send(app, es.sign(claims()))).status == 200
    assert (await send(app, ed.sign(claims()))).status == 200
    invalid(
        await send(app, SigningKey(es.private, "other", "ES384").sign(claims())),
        "no known key matches the token's kid and algorithm",
    )


async def test_two_secrets_under_rotation_both_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLD", "o" * 32)
    monkeypatch.setenv("NEW", "n" * 32)
    app, _ = gateway(algorithms=["HS256"], keys=[{"secret_env": "NEW"}, {"secret_env": "OLD"}])
    assert (await send(app, hs_token("o" * 32))).status == 200
    assert (await send(app, hs_token("n" * 32))).status == 200


async def test_a_claim_rule_that_denies_is_403_insufficient_scope(rsa: SigningKey) -> None:
    app, up = gateway(**rsa_block(rsa, claim_rules={"scope": ["orders:write"], "role": "admin"}))
    ok = rsa.sign(claims(scope="orders:read orders:write", role=["user", "admin"]))
    assert (await send(app, ok)).status == 200
    denied = await send(app, rsa.sign(claims(scope="orders:read", role="admin")))
    assert denied.status == 403 and denied.json()["error"] == "insufficient_scope"
    assert b'error="insufficient_scope"' in denied.headers[b"www-authenticate"]
    assert (await send(app, rsa.sign(claims(scope="orders:write")))).status == 403  # no role claim
    assert len(up.calls) == 1


def request_with(token: str) -> ProxyRequest:
    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send_(message: dict[str, Any]) -> None:
        del message

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/svc/x",
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {token}".encode())],
        "client": ("10.0.0.1", 1),
    }
    return ProxyRequest(scope, receive, send_)


async def test_the_consumer_is_the_configured_claim(rsa: SigningKey) -> None:
    by_sub = JwtAuth(jwt_config.parse(rsa_block(rsa)), None, None, time.time)
    req = request_with(rsa.sign(claims()))
    assert await by_sub(req) is None and req.consumer == "alice" and req.extra_headers is None
    by_client = JwtAuth(jwt_config.parse(rsa_block(rsa, consumer_claim="azp")), None, None, time.time)
    req = request_with(rsa.sign(claims(azp="billing-app")))
    assert await by_client(req) is None and req.consumer == "billing-app"


async def test_the_token_cache_skips_verification_until_exp(
    rsa: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, up = gateway(**rsa_block(rsa, token_cache=2, claims_to_headers={"sub": "X-User"}))
    token = rsa.sign(claims())
    calls = 0
    real = pyjwt.decode

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(pyjwt, "decode", counting)
    for _ in range(3):
        assert (await send(app, token)).status == 200
    assert calls == 1 and all((b"x-user", b"alice") in c.headers for c in up.calls)
    invalid(await send(app, rsa_key("r1").sign(claims())), "the token's signature does not verify")
    assert calls == 2  # a refused token is never cached


def test_the_token_cache_expires_entries_and_stays_bounded() -> None:
    cache = TokenCache(2)
    cache.put(b"a", 100.0, ("a", ()))
    cache.put(b"b", 100.0, ("b", ()))
    cache.put(b"c", 100.0, ("c", ()))
    assert cache.get(b"a", 50.0) is None and cache.get(b"c", 50.0) == ("c", ())
    assert cache.get(b"b", 100.0) is None and len(cache.entries) == 1


def test_the_readme_recipe_is_five_lines_and_parses() -> None:
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    section = readme.split("### Recipe: protect a service with its identity provider in five lines of YAML")[
        1
    ]
    recipe = section.split("```yaml\n")[1].split("```")[0]
    assert len(recipe.strip().splitlines()) == 5
    config = parse_config(yaml.safe_load(recipe), "README.md").options_for("orders").policy("jwt")
    assert isinstance(config, jwt_config.JwtConfig) and config.algorithms == ("RS256",)
    assert config.audience == ("orders",) and config.jwks_url is not None
