"""``GatewayApp.direct_app`` (``proxy/paths.Dispatch``): which requests the proxy serves directly, on the raw path's first segment."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from msa_gateway.app import GatewayApp
from msa_gateway.proxy.paths import OWN_SEGMENTS
from msa_gateway.settings import Settings, parse_config

SEGMENTS = st.sampled_from([*sorted(OWN_SEGMENTS), b"orders", b"healthz", b"metric", b"x"])
PATHS = st.lists(st.one_of(SEGMENTS, st.binary(max_size=6)), max_size=4).map(b"/".join)


def app() -> GatewayApp:
    gateway = GatewayApp(Settings(_env_file=None), parse_config({}, "test.yaml"))  # type: ignore[call-arg]
    gateway.proxy = object()  # type: ignore[assignment]  # stands for the proxy built at start-up
    return gateway


def first_segment(raw: bytes) -> bytes:
    end = raw.find(b"/", 1)
    return raw[1:end] if end > 0 else raw[1:]


def scope(raw: bytes) -> dict[str, Any]:
    return {"type": "http", "path": raw.decode("latin-1"), "raw_path": raw}


def test_own_endpoints_go_to_the_api_and_services_to_the_proxy() -> None:
    gateway = app()
    for raw in (b"/", b"", b"/health", b"/health/", b"/health/ready", b"/metrics", b"//orders", b"/docs"):
        assert gateway.direct_app(scope(raw)) is None, raw
    for raw in (b"/orders", b"/orders/health", b"/healthz", b"/metrics2/x", b"/orders/"):
        assert gateway.direct_app(scope(raw)) is gateway.proxy, raw


@given(PATHS, st.sampled_from([b"/", b"", b"x"]))
def test_the_first_segment_alone_decides(tail: bytes, head: bytes) -> None:
    raw = head + tail
    own = first_segment(raw) in OWN_SEGMENTS
    assert (app().direct_app(scope(raw)) is None) is own
