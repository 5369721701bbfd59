"""The uvicorn internals ``protocol.py`` and ``server.py`` rely on, on the pinned uvicorn version."""

from __future__ import annotations

import asyncio
import inspect
import re
import tomllib
from importlib.metadata import version
from typing import Any, cast

import pytest
import uvicorn
from uvicorn.lifespan.on import LifespanOn
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from msa_gateway.protocol import GatewayHttpProtocol, ProtocolFactory
from msa_gateway.server import adopt_uvicorn
from msa_gateway.settings import Settings
from tests.support.procs import REPO


def _pin() -> tuple[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if d.startswith("uvicorn"))
    match = re.fullmatch(r"uvicorn>=([\d.]+),<([\d.]+)", spec)
    assert match, f"uvicorn must be pinned with an upper bound, got {spec!r}"
    return match.group(1), match.group(2)


def _tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split(".")[:3])


def test_installed_uvicorn_is_inside_the_pinned_range() -> None:
    low, high = _pin()
    assert _tuple(low) <= _tuple(version("uvicorn")) < _tuple(high)


def test_the_server_startup_the_protocol_factory_relies_on_keeps_its_shape() -> None:
    """``GatewayHttpProtocol`` is uvicorn's httptools protocol rewritten; uvicorn builds it in ``startup``.

    Its cycle (request_cycle.py) is uvicorn's rewritten too: tests/unit/test_request_cycle.py runs
    both on the same messages, so a uvicorn whose cycle behaves otherwise fails there.
    """
    # Server.startup runs the lifespan before it builds the protocol factory from the config.
    startup = inspect.getsource(uvicorn.Server.startup)
    assert startup.index("lifespan.startup()") < startup.index("config.http_protocol_class")
    assert "config=config" in startup and "server_state=self.server_state" in startup and "_loop=" in startup


def test_the_protocol_does_what_uvicorns_own_does_where_the_server_relies_on_it() -> None:
    """The parts of uvicorn's httptools protocol the gateway's repeats, named in its source."""
    init = inspect.getsource(HttpToolsProtocol.__init__)
    for attr in ("self.tasks", "self.server_state", "self.root_path", "self.app", "self.connections"):
        assert attr in init, attr
    assert "lenient_data_after_close=True" in init
    # An upgrade request returns before the URL is parsed into the scope: ws_upgrade parses it.
    on_headers = inspect.getsource(HttpToolsProtocol.on_headers_complete)
    assert on_headers.index("should_upgrade()") < on_headers.index("parse_url")
    # Server.shutdown calls shutdown() on every connection it tracks: how a spliced WebSocket hears of SIGTERM.
    assert "connection.shutdown()" in inspect.getsource(uvicorn.Server.shutdown)
    for name in ("connection_made", "connection_lost", "data_received", "shutdown", "pause_writing"):
        assert callable(getattr(GatewayHttpProtocol, name)), name


async def _noop(scope: Any, receive: Any, send: Any) -> None:
    return None


def test_adopt_puts_the_gateway_protocol_drain_and_no_proxy_headers_into_a_plain_config() -> None:
    config = uvicorn.Config(_noop, http="h11", proxy_headers=True, timeout_graceful_shutdown=None)
    config.load()
    assert isinstance(config.loaded_app, ProxyHeadersMiddleware)
    lifespan = LifespanOn(config)
    settings = Settings(_env_file=None, max_request_line=100, drain_timeout=7.5, busy_poll_us=80)  # type: ignore[call-arg]
    assert adopt_uvicorn(lifespan.receive, settings)
    protocol: Any = config.http_protocol_class
    assert isinstance(protocol, ProtocolFactory)
    assert protocol.limits.max_request_line == 100
    assert protocol.poller is not None and protocol.poller.window == 80e-6  # BUSY_POLL_US too
    assert config.timeout_graceful_shutdown == 8
    assert config.loaded_app is _noop


def test_adopt_binds_the_settings_limits_when_uvicorn_was_given_the_gateway_protocol_class() -> None:
    config = uvicorn.Config(_noop, http="msa_gateway.protocol:GatewayHttpProtocol", log_config=None)
    config.load()
    assert cast(Any, config.http_protocol_class) is GatewayHttpProtocol
    settings = Settings(_env_file=None, max_headers=7)  # type: ignore[call-arg]
    assert adopt_uvicorn(LifespanOn(config).receive, settings)
    protocol: Any = config.http_protocol_class
    assert isinstance(protocol, ProtocolFactory) and protocol.limits.max_headers == 7


def test_adopt_reports_an_unknown_server() -> None:
    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0)
        return {}

    assert not adopt_uvicorn(receive, Settings(_env_file=None))  # type: ignore[call-arg]


def test_start_asgi_task_is_what_the_named_copy_repeats() -> None:
    """``GatewayHttpProtocol._create_task`` repeats uvicorn's task start with a fixed name."""
    source = inspect.getsource(HttpToolsProtocol._start_asgi_task)
    for part in ("cycle.run_asgi(app)", "reset_contextvars", "self.tasks.discard", "self.tasks.add(task)"):
        assert part in source, part


async def test_a_requests_scope_begins_as_uvicorns_own_on_message_begin_makes_it() -> None:
    """``GatewayHttpProtocol.on_message_begin`` copies the connection's part of the scope instead."""
    from tests.unit.server.test_direct_dispatch import App, connect

    proto, _ = connect(App())
    proto.app_state["shared"] = "lifespan state"
    proto.on_message_begin()
    ours, our_headers = proto.scope, proto.headers
    HttpToolsProtocol.on_message_begin(cast(Any, proto))
    theirs = proto.scope
    assert list(ours) == list(theirs) and ours == theirs  # the same keys, in the same order, the same values
    assert ours["headers"] is our_headers and ours["state"] is not proto.app_state
    proto.on_message_begin()
    assert proto.scope["state"] is not ours["state"] and proto.scope["headers"] is not our_headers


@pytest.mark.parametrize("value", [b"v", b"v ", b"v\t \t", b"", b" ", b"a b", b"100-continue ", b"x\t"])
async def test_a_header_is_kept_as_uvicorns_on_header_keeps_it(value: bytes) -> None:
    """Trailing SP and HT go (llhttp leaves them on the value), whatever ends the value."""
    from tests.unit.server.test_direct_dispatch import App, connect

    proto, _ = connect(App())
    proto.on_message_begin()
    proto.on_header(b"Expect", value)
    ours, our_expect = list(proto.headers), proto.expect_100_continue
    proto.on_message_begin()
    proto.expect_100_continue = False
    HttpToolsProtocol.on_header(cast(Any, proto), b"Expect", value)
    assert (ours, our_expect) == (list(proto.headers), proto.expect_100_continue)
    assert ours == [(b"expect", value.rstrip(b" \t"))]
