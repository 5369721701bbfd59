"""Stages are compiled per route: nothing configured means no stage; a stage can answer or pass."""

from __future__ import annotations

import pytest

from msa_gateway.errors import ConfigError, HTTPError
from msa_gateway.model import Instance, ServiceOptions, ServiceSpec
from msa_gateway.policies import chain
from msa_gateway.policies.base import Reply
from msa_gateway.policies.body_size import BodySizeLimit
from msa_gateway.proxy.handler import ProxyApp
from msa_gateway.proxy.request import Headers, ProxyRequest
from msa_gateway.runtime import Runtime
from msa_gateway.settings import parse_config
from tests.support.fake_upstream import FakeUpstream, call, instances, make_runtime


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


def parse_teapot(raw: object) -> str:
    if not isinstance(raw, dict) or "brew" not in raw:
        raise chain.PolicyError("brew", "required")
    return str(raw["brew"])


TEAPOT = chain.PolicyType("teapot", parse_teapot, lambda cfg, s: Teapot(), lambda cfg, s: Stamp())


@pytest.fixture
def stages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chain, "POLICIES", (TEAPOT,))


def teapot_runtime() -> tuple[Runtime, FakeUpstream]:
    rt, up, _ = make_runtime(policies={"teapot": {"brew": "earl grey"}})
    return rt, up


@pytest.mark.usefixtures("stages")
def test_policy_blocks_are_parsed_merged_and_removed_by_null() -> None:
    config = parse_config(
        {
            "defaults": {"policies": {"teapot": {"brew": "green"}}},
            "services": {
                "a": {"policies": {"teapot": {"brew": "black"}}},
                "b": {"policies": {"teapot": None}},
            },
        },
        "t.yaml",
    )
    assert config.defaults.policy("teapot") == "green"
    assert config.options_for("a").policy("teapot") == "black"
    assert config.options_for("b").policy("teapot") is None
    assert config.options_for("c").policy("teapot") == "green"


@pytest.mark.usefixtures("stages")
@pytest.mark.parametrize(
    ("data", "key", "reason"),
    [
        (
            {"defaults": {"policies": {"coffee": {}}}},
            "defaults.policies.coffee",
            "unknown policy; known: teapot",
        ),
        ({"services": {"a": {"policies": {"teapot": {}}}}}, "services.a.policies.teapot.brew", "required"),
    ],
)
def test_a_bad_policy_block_names_file_key_and_reason(data: dict[str, object], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "t.yaml")
    assert (info.value.source, info.value.key, info.value.reason) == ("t.yaml", key, reason)


@pytest.mark.usefixtures("stages")
async def test_a_request_stage_can_answer_instead_of_the_instance() -> None:
    rt, up = teapot_runtime()
    rt.apply(instances(9001))
    answer = await call(ProxyApp(rt), "BREW")
    assert answer.status == 418 and answer.body == b"short and stout"
    assert b"x-request-id" in answer.headers and not up.calls


@pytest.mark.usefixtures("stages")
async def test_a_request_stage_can_refuse_with_the_one_error_shape() -> None:
    rt, up = teapot_runtime()
    rt.apply(instances(9001))
    answer = await call(ProxyApp(rt), "DELETE")
    assert answer.status == 500 and answer.json()["error"] == "internal_error" and not up.calls


@pytest.mark.usefixtures("stages")
async def test_passing_stages_forward_and_response_stages_see_the_head() -> None:
    rt, up = teapot_runtime()
    rt.apply(instances(9001))
    answer = await call(ProxyApp(rt), "GET")
    assert answer.status == 200 and answer.headers[b"x-stamped"] == b"200" and len(up.calls) == 1
