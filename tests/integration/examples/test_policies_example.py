"""``examples/policies.yaml``: ``msa-gateway check-config`` accepts it and every route does what its comment says."""

from __future__ import annotations

import io
import subprocess

from msa_gateway.model import Instance
from msa_gateway.observability.access import AccessLog
from msa_gateway.proxy.handler import ProxyApp
from msa_gateway.runtime import Runtime
from msa_gateway.settings import Settings, load_config
from tests.support.fake_upstream import FakeUpstream, call
from tests.support.procs import PY, REPO, python_env

EXAMPLE = REPO / "examples" / "policies.yaml"
API = [(b"host", b"api.example.com")]
USERS = {"127.0.0.1:8001", "127.0.0.1:8002"}
ORDERS = {"127.0.0.1:8011", "127.0.0.1:8012"}
ORDERS_V2 = "127.0.0.1:8021"


def test_check_config_accepts_the_example() -> None:
    res = subprocess.run(
        [PY, "-m", "msa_gateway.cli", "check-config", str(EXAMPLE)],
        env=python_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{EXAMPLE}: ok (3 services, 5 static instances, 6 routes)"


def proxy() -> tuple[ProxyApp, FakeUpstream]:
    upstream = FakeUpstream()
    config = load_config(str(EXAMPLE))
    rt = Runtime(Settings(_env_file=None), config, upstream=upstream, access=AccessLog(stream=io.StringIO()))  # type: ignore[call-arg]
    rt.apply(
        {
            name: tuple(Instance(i.id, i.host, i.port) for i in svc.instances)
            for name, svc in config.services.items()
        }
    )
    return ProxyApp(rt), upstream


async def test_every_route_of_the_example_does_what_its_comment_says() -> None:
    app, up = proxy()
    await call(app, "GET", "/v1/users/7", headers=API)
    assert up.calls[-1].address in USERS and up.calls[-1].target == "/users/7"
    await call(app, "GET", "/v1/orders/3", headers=API)
    assert up.calls[-1].address in ORDERS and up.calls[-1].target == "/orders/3"
    answer = await call(app, "POST", "/v1/orders/admin/import", headers=API)
    assert answer.status == 403  # the test client 10.0.0.9 is not in the office network
    await call(app, "GET", "/v1/orders/admin/report", headers=API)  # GET is not the admin route
    assert up.calls[-1].target == "/orders/admin/report"
    await call(app, "GET", "/legacy/items/12.json")
    assert up.calls[-1].address in ORDERS and up.calls[-1].target == "/items/12"
    await call(app, "GET", "/users", headers=[(b"host", b"gw"), (b"x-beta", b"1")])
    assert (b"x-canary", b"true") in up.calls[-1].headers and up.calls[-1].target == "/users"
    assert not any(n == b"x-client-ip" for n, _ in up.calls[-1].headers)  # a route's headers block replaces
    answer = await call(
        app, "GET", "/user-service/users", headers=[(b"host", b"gw"), (b"origin", b"https://app.example.com")]
    )
    assert up.calls[-1].target == "/users" and (b"x-client-ip", b"10.0.0.9") in up.calls[-1].headers
    assert answer.headers[b"access-control-allow-origin"] == b"https://app.example.com"
    assert answer.headers[b"x-content-type-options"] == b"nosniff"


async def test_the_checkout_canary_sends_testers_to_v2_and_keeps_a_user_on_one_version() -> None:
    app, up = proxy()
    for canary in ((b"x-canary", b"1"), (b"cookie", b"canary=always")):
        await call(app, "GET", "/checkout/cart", headers=[(b"host", b"gw"), canary])
        assert up.calls[-1].address == ORDERS_V2 and up.calls[-1].target == "/checkout/cart"
    versions = set()
    for _ in range(10):
        await call(app, "GET", "/checkout/cart", headers=[(b"host", b"gw"), (b"x-user-id", b"ada")])
        versions.add(up.calls[-1].address == ORDERS_V2)
    assert len(versions) == 1
