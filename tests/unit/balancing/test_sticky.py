"""sticky: the gateway's cookie brings a client back; it is opaque and falls back when the instance is gone."""

from __future__ import annotations

from msa_gateway.balancing.sticky import Sticky, instance_token
from msa_gateway.balancing.table import create_balancer
from msa_gateway.model import BalancerOptions, Instance
from tests.support.requests import request

INSTS = tuple(Instance(id=f"i{k}", host=f"10.0.0.{k}", port=8000) for k in range(3))


def _cookie(name: bytes, inst: Instance) -> list[tuple[bytes, bytes]]:
    return [(b"cookie", b"other=1; %s=%s" % (name, instance_token("", inst)))]


def test_cookie_naming_an_eligible_instance_picks_it() -> None:
    b = Sticky.create(lambda _: 0)
    req = request(headers=_cookie(b"msa_sticky", INSTS[2]))
    assert {b.pick_for(INSTS, req).id for _ in range(20)} == {"i2"}


def test_instance_gone_falls_back_to_the_others() -> None:
    b = Sticky.create(lambda _: 0)
    req = request(headers=_cookie(b"msa_sticky", INSTS[2]))
    assert {b.pick_for(INSTS[:2], req).id for _ in range(40)} == {"i0", "i1"}


def test_token_is_opaque_never_the_address() -> None:
    token = instance_token("svc", INSTS[1])
    assert b"10.0.0.1" not in token and b"8000" not in token
    assert token == instance_token("svc", INSTS[1]) != instance_token("svc", INSTS[2])


def test_answer_sets_the_cookie_unless_it_already_names_the_instance() -> None:
    b = create_balancer("sticky", lambda _: 0, BalancerOptions(cookie="route", cookie_max_age=60))
    assert isinstance(b, Sticky)
    stage = b.response_stage(INSTS[0], "")
    fresh = stage(request(), 200, [])
    assert fresh == [
        (b"set-cookie", b"route=%s; Path=/; HttpOnly; SameSite=Lax; Max-Age=60" % b.token(INSTS[0]))
    ]
    assert stage(request(headers=_cookie(b"route", INSTS[0])), 200, []) == []
    assert stage(request(headers=_cookie(b"route", INSTS[1])), 200, [])[0][0] == b"set-cookie"
