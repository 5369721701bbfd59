"""``api_key``: keys from env/file/hashes, looked up by SHA-256; consumer forwarded, credential stripped."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from msa_gateway.errors import ConfigError
from msa_gateway.policies import api_key
from msa_gateway.policies.base import PolicyError
from msa_gateway.proxy.handler import ProxyApp
from msa_gateway.settings import parse_config
from tests.support.fake_upstream import FakeUpstream, access_lines, call, instances, make_runtime

ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdef01"


def gateway(monkeypatch: pytest.MonkeyPatch, **block: Any) -> tuple[ProxyApp, FakeUpstream]:
    monkeypatch.setenv("TEST_API_KEYS", f"alice:{ALICE}, bob:{BOB}")
    rt, up, _ = make_runtime(policies={"api_key": {"keys_env": "TEST_API_KEYS", **block}})
    rt.apply(instances(9001))
    return ProxyApp(rt), up


def sent_headers(up: FakeUpstream) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = {}
    for name, value in up.calls[-1].headers:
        out.setdefault(name, []).append(value)
    return out


def test_keys_from_env_file_and_hashes_are_kept_as_digests_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KEYS", f"alice:{ALICE}")
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# comment\n\nbob:{BOB}\ncarol:sha256:{'ab' * 32}\n")
    dave = hashlib.sha256(b"dave-key-0123456789abcdef").hexdigest()
    config = api_key.parse(
        {"keys_env": "KEYS", "keys_file": str(keys_file), "keys": [{"consumer": "dave", "sha256": dave}]}
    )
    assert dict(config.keys) == {
        api_key.digest(ALICE): "alice",
        api_key.digest(BOB): "bob",
        bytes.fromhex("ab" * 32): "carol",
        bytes.fromhex(dave): "dave",
    }
    assert ALICE not in repr(config) and api_key.digest(ALICE).hex() not in repr(config)


@pytest.mark.parametrize(
    ("block", "key", "reason"),
    [
        ({}, "keys", "no key configured"),
        ({"keys_env": "NOPE_NOT_SET"}, "keys_env", "NOPE_NOT_SET is not set"),
        ({"keys_file": "/nonexistent/keys"}, "keys_file", "cannot read /nonexistent/keys"),
        ({"keys": [{"consumer": "a", "key": ALICE}]}, "keys.0.key", "unknown key"),
        ({"keys": [{"consumer": "a", "sha256": "xyz"}]}, "keys.0.sha256", "no plaintext"),
        ({"keys": [{"sha256": "ab" * 32}]}, "keys.0.consumer", "required"),
        ({"keys_env": "SHORT"}, "keys_env (SHORT), entry 0", "shorter than 16"),
        ({"keys_env": "DUP"}, "keys", "given to both"),
        ({"keys_env": "KEYS", "header": "Host"}, "header", "gateway owns"),
        ({"keys_env": "KEYS", "header": "bad header"}, "header", "not a header name"),
        ({"keys_env": "KEYS", "query": "a&b"}, "query", "query parameter name"),
        ({"keys_env": "KEYS", "strip_credential": "yes"}, "strip_credential", "true or false"),
        ({"keys_env": "KEYS", "realm": 'a"b'}, "realm", "quotes"),
    ],
)
def test_parse_errors_name_the_key(
    monkeypatch: pytest.MonkeyPatch, block: dict[str, Any], key: str, reason: str
) -> None:
    monkeypatch.setenv("KEYS", f"alice:{ALICE}")
    monkeypatch.setenv("SHORT", "alice:short")
    monkeypatch.setenv("DUP", f"alice:{ALICE} bob:{ALICE}")
    with pytest.raises(PolicyError) as info:
        api_key.parse(block)
    assert info.value.key == key and reason in info.value.reason
    assert "short" not in info.value.reason.replace("shorter", "")  # a key is never echoed


def test_a_bad_block_fails_start_up_with_file_and_full_key() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {"services": {"orders": {"policies": {"api_key": {"keys_env": "NOPE_NOT_SET"}}}}}, "gw.yaml"
        )
    assert (info.value.source, info.value.key) == ("gw.yaml", "services.orders.policies.api_key.keys_env")


async def test_a_known_key_passes_with_its_consumer_and_the_key_stripped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, up = gateway(monkeypatch)
    answer = await call(app, headers=[(b"host", b"gw"), (b"x-api-key", BOB.encode())])
    assert answer.status == 200
    headers = sent_headers(up)
    assert headers[b"x-consumer-id"] == [b"bob"] and b"x-api-key" not in headers


async def test_a_client_cannot_send_its_own_consumer_id(monkeypatch: pytest.MonkeyPatch) -> None:
    app, up = gateway(monkeypatch)
    spoof = [(b"host", b"gw"), (b"x-consumer-id", b"admin"), (b"x-api-key", ALICE.encode())]
    assert (await call(app, headers=spoof)).status == 200
    assert sent_headers(up)[b"x-consumer-id"] == [b"alice"]
    # Connection: x-consumer-id would drop a header copied from the client, never the gateway's own.
    sneaky = [(b"host", b"gw"), (b"connection", b"x-consumer-id"), (b"x-api-key", ALICE.encode())]
    assert (await call(app, headers=sneaky)).status == 200
    assert sent_headers(up)[b"x-consumer-id"] == [b"alice"]


async def test_missing_and_unknown_keys_are_401_with_a_challenge(monkeypatch: pytest.MonkeyPatch) -> None:
    app, up = gateway(monkeypatch, realm="orders")
    missing = await call(app)
    assert missing.status == 401 and missing.json()["error"] == "unauthorized"
    assert missing.headers[b"www-authenticate"] == b'ApiKey realm="orders"'
    wrong = await call(app, headers=[(b"host", b"gw"), (b"x-api-key", b"guess-0123456789abcdef")])
    assert wrong.status == 401 and wrong.json()["error"] == "invalid_api_key"
    assert wrong.headers[b"www-authenticate"] == b'ApiKey realm="orders", error="invalid_key"'
    assert b"guess" not in wrong.body and not up.calls


async def test_a_key_in_the_query_is_removed_from_the_target(monkeypatch: pytest.MonkeyPatch) -> None:
    app, up = gateway(monkeypatch, query="api_key")
    answer = await call(app, path=f"/svc/items?a=1&api_key={ALICE}&b=%20")
    assert answer.status == 200 and up.calls[-1].target == "/items?a=1&b=%20"
    assert sent_headers(up)[b"x-consumer-id"] == [b"alice"]
    only = await call(app, path=f"/svc/items?api_key={BOB}")
    assert only.status == 200 and up.calls[-1].target == "/items"


async def test_stripping_and_forwarding_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    app, up = gateway(
        monkeypatch, header="Api-Token", strip_credential=False, consumer_header=None, query="k"
    )
    assert (await call(app, headers=[(b"host", b"gw"), (b"api-token", ALICE.encode())])).status == 200
    headers = sent_headers(up)
    assert headers[b"api-token"] == [ALICE.encode()] and b"x-consumer-id" not in headers
    assert (await call(app, path=f"/svc/x?k={BOB}")).status == 200
    assert up.calls[-1].target == f"/x?k={BOB}"


async def test_the_access_log_never_holds_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_API_KEYS", f"alice:{ALICE}")
    rt, _, log = make_runtime(policies={"api_key": {"keys_env": "TEST_API_KEYS", "query": "api_key"}})
    rt.apply(instances(9001))
    await call(ProxyApp(rt), path=f"/svc/x?api_key={ALICE}")
    await call(ProxyApp(rt), path="/svc/x?api_key=wrong-0123456789abcdef")
    assert [line["status"] for line in access_lines(log)] == [200, 401]
    assert ALICE not in log.getvalue() and "wrong-0123" not in log.getvalue()
