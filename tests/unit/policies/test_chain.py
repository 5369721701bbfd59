"""Stages are compiled per route: nothing configured means no stage; a stage can answer or pass."""

from __future__ import annotations

import pytest

from msa_gateway.errors import HTTPError
from msa_gateway.model import Instance, ServiceOptions, ServiceSpec
from msa_gateway.policies import chain
from msa_gateway.policies.base import Reply
from msa_gateway.policies.body_size import BodySizeLimit
from msa_gateway.proxy.handler import ProxyApp
from msa_gateway.proxy.request import Headers, ProxyRequest
from tests.support.fake_upstream import call, instances, make_runtime


def spec(**options: object) -> ServiceSpec:
    return ServiceSpec("svc", (Instance("a", "127.0.0.1", 1),), ServiceOptions(**options))  # type: ignore[arg-type]


def test_a_route_with_nothing_configured_has_no_stage() -> None:
    assert chain.compile_request_stages(spec()) == ()
    assert chain.compile_response_stages(spec()) == ()


def test_max_body_size_compiles_to_one_stage() -> None:
    (stage,) = chain.compile_request_stages(spec(max_body_size=10))
    assert isinstance(stage, BodySizeLimit) and stage.limit == 10


class Teapot:
    name = "teapot"

    async def __call__(self, request: ProxyRequest) -> Reply | None:
        if request.method == "BREW":
            return Reply(418, ((b"content-type", b"text/plain"),), b"short and stout")
        if request.method == "DELETE":
            raise HTTPError("no")
        return None


class Stamp:
    name = "stamp"

    def __call__(self, request: ProxyRequest, status: int, headers: Headers) -> Headers:
        headers.append((b"x-stamped", str(status).encode()))
        return headers


@pytest.fixture
def stages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chain, "REQUEST_STAGES", (lambda s: Teapot(),))
    monkeypatch.setattr(chain, "RESPONSE_STAGES", (lambda s: Stamp(),))


@pytest.mark.usefixtures("stages")
async def test_a_request_stage_can_answer_instead_of_the_instance() -> None:
    rt, up, _ = make_runtime()
    rt.apply(instances(9001))
    answer = await call(ProxyApp(rt), "BREW")
    assert answer.status == 418 and answer.body == b"short and stout"
    assert b"x-request-id" in answer.headers and not up.calls


@pytest.mark.usefixtures("stages")
async def test_a_request_stage_can_refuse_with_the_one_error_shape() -> None:
    rt, up, _ = make_runtime()
    rt.apply(instances(9001))
    answer = await call(ProxyApp(rt), "DELETE")
    assert answer.status == 500 and answer.json()["error"] == "internal_error" and not up.calls


@pytest.mark.usefixtures("stages")
async def test_passing_stages_forward_and_response_stages_see_the_head() -> None:
    rt, up, _ = make_runtime()
    rt.apply(instances(9001))
    answer = await call(ProxyApp(rt), "GET")
    assert answer.status == 200 and answer.headers[b"x-stamped"] == b"200" and len(up.calls) == 1
