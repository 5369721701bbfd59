"""JWT against a real JWKS endpoint on 127.0.0.1: key rotation, the IdP going down, unknown-``kid`` storms.

The JWKS server counts the fetches it answers; the gateway's monotonic clock is a hand-moved
``Clock`` (``runtime.shared.monotonic``), so intervals, TTLs and backoff are stepped, never slept.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from msa_gateway.policies.jwks import JwksCache
from msa_gateway.policies.jwt_auth import JwtAuth
from msa_gateway.proxy.handler import ProxyApp
from tests.support.fake_upstream import Answer, call, instances, make_runtime
from tests.support.gateway import serve_gateway, service_yaml
from tests.support.recorder import Recorder, Reply
from tests.support.tokens import AUDIENCE, ISSUER, Clock, JwksServer, SigningKey, claims, forge_hs256, rsa_key
from tests.support.traffic import eventually

INTERVAL = 10.0


@pytest.fixture(scope="module")
def k1() -> SigningKey:
    return rsa_key("k1")


@pytest.fixture(scope="module")
def k2() -> SigningKey:
    return rsa_key("k2")


@pytest.fixture
async def idp(k1: SigningKey) -> AsyncIterator[JwksServer]:
    server = await JwksServer(keys=[k1]).start()
    try:
        yield server
    finally:
        await server.stop()


class Gateway:
    """A runtime over the fake upstream with a ``jwt`` policy on ``svc`` (and ``other``) and a manual clock."""

    def __init__(self, idp: JwksServer, **jwks: Any) -> None:
        block = {
            "jwks_url": idp.url,
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "algorithms": ["RS256"],
            "claims_to_headers": {"sub": "X-User-ID"},
            "jwks": {"refetch_interval": INTERVAL, **jwks},
        }
        self.rt, self.up, _ = make_runtime(policies={"jwt": block})
        self.clock = Clock()
        self.rt.shared.monotonic = self.clock
        self.rt.apply({**instances(9001), **instances(9002, service="other")})
        self.app = ProxyApp(self.rt)

    @property
    def cache(self) -> JwksCache:
        stage = self.rt.snapshot.services["svc"].request_stages[0]
        assert isinstance(stage, JwtAuth) and stage.jwks is not None
        return stage.jwks

    async def send(self, token: str, path: str = "/svc/x") -> Answer:
        return await call(
            self.app, path=path, headers=[(b"host", b"gw"), (b"authorization", f"Bearer {token}".encode())]
        )


@pytest.fixture
async def gw(idp: JwksServer) -> AsyncIterator[Gateway]:
    gateway = Gateway(idp)
    try:
        yield gateway
    finally:
        await gateway.rt.tasks.aclose()


def stranger(n: int) -> str:
    """A token whose ``kid`` the IdP never published (signed by a key nobody knows)."""
    return STRANGER.sign(claims(), kid=f"unknown-{n}")


STRANGER = rsa_key("stranger")


async def test_keys_are_fetched_once_shared_by_services_and_kept_across_snapshots(
    gw: Gateway, idp: JwksServer, k1: SigningKey
) -> None:
    answer = await gw.send(k1.sign(claims()))
    assert answer.status == 200 and (b"x-user-id", b"alice") in gw.up.calls[-1].headers
    assert (await gw.send(k1.sign(claims()), "/other/x")).status == 200
    gw.rt.apply({**instances(9001, 9003), **instances(9002, service="other")})  # a new snapshot
    assert (await gw.send(k1.sign(claims()))).status == 200
    assert idp.fetches == 1


async def test_a_rotated_in_kid_works_after_exactly_one_refetch(
    gw: Gateway, idp: JwksServer, k1: SigningKey, k2: SigningKey
) -> None:
    assert (await gw.send(k1.sign(claims()))).status == 200
    idp.keys = [k2]  # the IdP rotates: k2 in, k1 out
    gw.clock.advance(INTERVAL)
    assert (await gw.send(k2.sign(claims()))).status == 200
    assert idp.fetches == 2
    for _ in range(5):
        assert (await gw.send(k2.sign(claims()))).status == 200
    # k1 left the set with the refetch: refused at once, and no new fetch inside the interval.
    refused = await gw.send(k1.sign(claims()))
    assert refused.status == 401 and b"no known key" in refused.headers[b"www-authenticate"]
    assert idp.fetches == 2


async def test_a_storm_of_unknown_kids_costs_at_most_one_fetch_per_interval(
    gw: Gateway, idp: JwksServer, k1: SigningKey
) -> None:
    assert (await gw.send(k1.sign(claims()))).status == 200
    gw.clock.advance(INTERVAL)
    idp.hold = asyncio.Event()
    storm = [asyncio.create_task(gw.send(stranger(n))) for n in range(50)]
    await eventually(lambda: idp.fetches, 5, expect=2)
    idp.hold.set()
    answers = await asyncio.gather(*storm)
    assert {a.status for a in answers} == {401} and idp.fetches == 2  # coalesced into one fetch
    for n in range(50, 100):  # the same interval: answered at once, no fetch
        assert (await gw.send(stranger(n))).status == 401
    assert (await gw.send(k1.sign(claims()))).status == 200
    assert idp.fetches == 2
    gw.clock.advance(INTERVAL)
    assert (await gw.send(stranger(100))).status == 401
    assert idp.fetches == 3


async def test_the_idp_down_keeps_serving_the_last_keys_with_backoff(
    gw: Gateway, idp: JwksServer, k1: SigningKey, k2: SigningKey
) -> None:
    assert (await gw.send(k1.sign(claims()))).status == 200
    idp.down = True
    gw.clock.advance(300)  # the keys' max-age passed: the next request refreshes in the background
    assert (await gw.send(k1.sign(claims()))).status == 200
    await eventually(lambda: gw.cache.failures, 5, expect=1)
    assert idp.fetches == 2
    for _ in range(5):  # inside the backoff: served from the last good keys, no fetch
        assert (await gw.send(k1.sign(claims()))).status == 200
        assert (await gw.send(stranger(0))).status == 401
    assert idp.fetches == 2
    gw.clock.advance(INTERVAL)  # first backoff: 10 s
    assert (await gw.send(k1.sign(claims()))).status == 200
    await eventually(lambda: gw.cache.failures, 5, expect=2)
    gw.clock.advance(INTERVAL)  # second backoff is 20 s: not yet
    assert (await gw.send(k1.sign(claims()))).status == 200
    assert idp.fetches == 3
    idp.down, idp.keys = False, [k1, k2]
    gw.clock.advance(INTERVAL)
    assert (await gw.send(k2.sign(claims()))).status == 200  # an unknown kid waits for this fetch
    assert idp.fetches == 4 and gw.cache.failures == 0


async def test_an_idp_down_at_start_refuses_and_retries_only_after_the_backoff(
    idp: JwksServer, k1: SigningKey
) -> None:
    idp.down = True
    gw = Gateway(idp)
    try:
        refused = await gw.send(k1.sign(claims()))
        assert refused.status == 401 and refused.json()["error"] == "invalid_token"
        assert (await gw.send(k1.sign(claims()))).status == 401
        assert idp.fetches == 1 and not gw.up.calls
        idp.down = False
        gw.clock.advance(INTERVAL)
        assert (await gw.send(k1.sign(claims()))).status == 200
        assert idp.fetches == 2
    finally:
        await gw.rt.tasks.aclose()


@pytest.mark.parametrize(
    ("cache_control", "ttl"), [("public, max-age=120", 120), ("max-age=5", 60), ("no-store", 60), (None, 300)]
)
async def test_the_ttl_comes_from_cache_control_bounded(
    idp: JwksServer, k1: SigningKey, cache_control: str | None, ttl: float
) -> None:
    idp.cache_control = cache_control
    gw = Gateway(idp, min_ttl=60, default_ttl=300)
    try:
        assert (await gw.send(k1.sign(claims()))).status == 200
        gw.clock.advance(ttl - 1)
        assert (await gw.send(k1.sign(claims()))).status == 200
        assert idp.fetches == 1
        gw.clock.advance(1)
        assert (await gw.send(k1.sign(claims()))).status == 200
        await eventually(lambda: idp.fetches, 5, expect=2)
    finally:
        await gw.rt.tasks.aclose()


async def test_five_lines_of_yaml_protect_a_service_end_to_end(idp: JwksServer, k1: SigningKey) -> None:
    """The README recipe, served by uvicorn, with a real backend behind it."""
    async with Recorder(Reply(body=b"ok")) as backend:
        config = service_yaml({"orders": [backend.port]})
        config["services"]["orders"]["policies"] = {
            "jwt": {"jwks_url": idp.url, "issuer": ISSUER, "audience": AUDIENCE, "algorithms": ["RS256"]}
        }
        async with serve_gateway(config) as gw, aiohttp.ClientSession() as session:
            async with session.get(f"{gw.url}/orders/list") as r:
                assert r.status == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="msa-gateway"'
            auth = {"Authorization": f"Bearer {k1.sign(claims())}"}
            async with session.get(f"{gw.url}/orders/list", headers=auth) as r:
                assert r.status == 200 and await r.read() == b"ok"
            assert len(backend.requests) == 1 and idp.fetches == 1


async def test_a_fetch_cancelled_at_shutdown_releases_the_requests_waiting_for_it(
    gw: Gateway, idp: JwksServer, k1: SigningKey
) -> None:
    idp.hold = asyncio.Event()
    waiting = asyncio.create_task(gw.send(k1.sign(claims())))
    await eventually(lambda: idp.fetches, 5, expect=1)
    await gw.rt.tasks.aclose()  # the runtime shuts down while the fetch is in flight
    answer = await asyncio.wait_for(waiting, 5)
    assert answer.status == 401 and gw.cache.failures == 0
    idp.hold.set()


async def test_a_jwks_key_is_never_used_as_an_hmac_secret(idp: JwksServer, k1: SigningKey) -> None:
    rt, up, _ = make_runtime(
        policies={"jwt": {"jwks_url": idp.url, "algorithms": ["RS256", "HS256"], "audience": AUDIENCE}}
    )
    rt.apply(instances(9001))
    try:
        forged = forge_hs256(k1.public_pem().encode(), claims(), kid="k1")
        answer = await call(ProxyApp(rt), headers=[(b"authorization", f"Bearer {forged}".encode())])
        assert answer.status == 401 and b"no known key matches" in answer.headers[b"www-authenticate"]
        genuine = await call(
            ProxyApp(rt), headers=[(b"authorization", f"Bearer {k1.sign(claims())}".encode())]
        )
        assert genuine.status == 200 and len(up.calls) == 1 and idp.fetches == 1
    finally:
        await rt.tasks.aclose()
