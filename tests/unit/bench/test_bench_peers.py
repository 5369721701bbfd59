"""The Python peers of ``bench.run``: which are measured, how they start, the x bare-asgi ratio, their apps."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest
from bench.peers import PEER_NAMES, UPSTREAMS_ENV, peer_command, select_configs
from bench.peers.aiohttp_proxy import parse_upstreams
from bench.peers.bare_asgi import app as bare_app
from bench.peers.callback_proxy import framed, parse_backends, request_head, status_line
from bench.report import BUILTIN, Measurement, format_table, ratios, summarize
from bench.run import parse_args

from tests.unit.bench.results import wrk_result


def test_by_default_every_builtin_and_every_installed_peer_is_measured() -> None:
    chosen, notes = select_configs(None, BUILTIN, installed=lambda module: True)
    assert chosen == [
        "direct", "nginx-proxy", "gateway", "bare-asgi", "aiohttp-proxy", "proxy.py", "callback-proxy"
    ]  # fmt: skip
    assert notes == []


def test_a_peer_whose_module_is_missing_is_left_out_of_the_default_with_a_note() -> None:
    chosen, notes = select_configs(None, BUILTIN, installed=lambda module: module != "proxy")
    assert "proxy.py" not in chosen
    assert "aiohttp-proxy" in chosen
    assert notes == ["peer proxy.py left out: module(s) proxy not installed (make venv)"]


def test_asking_for_a_missing_peer_by_name_says_what_to_install() -> None:
    with pytest.raises(SystemExit, match=r"peer proxy.py needs module\(s\) proxy: pip install proxy.py"):
        select_configs("gateway,proxy.py", BUILTIN, installed=lambda module: module != "proxy")


def test_an_explicit_list_is_kept_in_order_and_unknown_names_are_refused() -> None:
    assert select_configs(" bare-asgi, gateway ,", BUILTIN, installed=lambda m: True) == (
        ["bare-asgi", "gateway"],
        [],
    )
    with pytest.raises(SystemExit, match=r"unknown configuration\(s\): bogus"):
        select_configs("gateway,bogus", BUILTIN, installed=lambda m: True)


def test_the_command_line_selects_peers_and_refuses_a_variant_named_like_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert parse_args(["--configs", "bare-asgi,aiohttp-proxy"]).configs == ["bare-asgi", "aiohttp-proxy"]
    with pytest.raises(SystemExit):
        parse_args(["--variant", "bare-asgi=x run"])
    assert "needs a new NAME" in capsys.readouterr().err


def test_uvicorn_peers_run_uvloop_httptools_without_access_log_and_proxy_py_threaded() -> None:
    for name in ("bare-asgi", "aiohttp-proxy"):
        argv = peer_command(name, 40123, python="/py")
        assert argv[:3] == ["/py", "-m", "uvicorn"]
        for flag in ("--loop uvloop", "--http httptools", "--port 40123", "--host 127.0.0.1"):
            assert flag in " ".join(argv)
        assert "--no-access-log" in argv
        assert "--workers" not in argv  # one process
    assert peer_command("aiohttp-proxy", 1, python="/py")[-2:] == [
        "--factory",
        "bench.peers.aiohttp_proxy:create_app",
    ]
    proxy = " ".join(peer_command("proxy.py", 40124, python="/py"))
    for flag in ("-m proxy", "--port 40124", "--enable-reverse-proxy", "--threaded", "--num-workers 1"):
        assert flag in proxy
    assert peer_command("callback-proxy", 40125, python="/py") == [
        "/py", "-m", "bench.peers.callback_proxy", "--port", "40125"
    ]  # fmt: skip
    assert set(PEER_NAMES) == {"bare-asgi", "aiohttp-proxy", "proxy.py", "callback-proxy"}


def _measured(*configs: tuple[str, float]) -> list[Measurement]:
    return [Measurement(c, "get", 0, wrk_result(rps)) for c, rps in configs]


def test_the_table_gets_an_x_bare_asgi_column_when_the_floor_was_measured() -> None:
    ms = _measured(
        ("nginx-proxy", 50_000), ("bare-asgi", 30_000), ("aiohttp-proxy", 7_500), ("gateway", 12_000)
    )
    header, _, *rows = format_table(summarize(ms)).splitlines()
    assert header.split()[-2:] == ["x", "bare-asgi"]
    by_config = {row.split()[1]: row.split() for row in rows}
    assert list(by_config) == ["nginx-proxy", "bare-asgi", "aiohttp-proxy", "gateway"]
    assert by_config["gateway"][-1] == "0.400"
    assert by_config["aiohttp-proxy"][-1] == "0.250"
    assert by_config["bare-asgi"][-1] == "1.000"
    got = ratios(summarize(ms))
    assert got["get: gateway/bare-asgi"] == pytest.approx(0.4)
    assert got["get: gateway/aiohttp-proxy"] == pytest.approx(1.6)
    assert got["get: gateway/nginx-proxy"] == pytest.approx(0.24)


def test_without_bare_asgi_there_is_no_such_column() -> None:
    header = format_table(summarize(_measured(("nginx-proxy", 50_000), ("gateway", 12_000)))).splitlines()[0]
    assert "bare-asgi" not in header


def test_upstreams_parse_to_base_urls_and_bad_values_name_the_variable() -> None:
    assert parse_upstreams("127.0.0.1:9101, 127.0.0.1:9102") == [
        "http://127.0.0.1:9101",
        "http://127.0.0.1:9102",
    ]
    for bad in ("", "127.0.0.1", "127.0.0.1:x", ":9101"):
        with pytest.raises(SystemExit, match=UPSTREAMS_ENV):
            parse_upstreams(bad)


def test_callback_proxy_parses_backends_and_names_the_variable_for_bad_ones() -> None:
    assert parse_backends("127.0.0.1:9101, 127.0.0.1:9102") == [("127.0.0.1", 9101), ("127.0.0.1", 9102)]
    for bad in ("", "127.0.0.1", "127.0.0.1:x", ":9101"):
        with pytest.raises(SystemExit, match=UPSTREAMS_ENV):
            parse_backends(bad)


def test_callback_proxy_drops_hop_by_hop_and_framing_headers_and_frames_bodies_itself() -> None:
    headers = [(b"host", b"gw"), (b"connection", b"keep-alive"), (b"content-length", b"3"), (b"x-a", b"1")]
    head = request_head(b"POST", b"/s/p?q=1", headers, b"10.0.0.1")
    assert head == b"POST /s/p?q=1 HTTP/1.1\r\nhost: gw\r\nx-a: 1\r\nx-forwarded-for: 10.0.0.1\r\n"
    assert framed(head, b"abc") == head + b"content-length: 3\r\n\r\nabc"
    assert framed(head, b"", length=False) == head + b"\r\n"  # a GET without a body
    assert framed(head, b"", length=True).endswith(b"content-length: 0\r\n\r\n")  # an empty 200
    assert status_line(404) == b"HTTP/1.1 404 Not Found\r\n"
    assert status_line(599) == b"HTTP/1.1 599 \r\n"


def test_bare_asgi_reads_the_whole_body_then_answers_ok() -> None:
    chunks = [
        {"type": "http.request", "body": b"x" * 512, "more_body": True},
        {"type": "http.request", "body": b"y" * 512, "more_body": False},
    ]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return chunks.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    asyncio.run(bare_app({"type": "http", "method": "POST"}, receive, send))
    assert chunks == []  # both body messages were read before answering
    start, body = sent
    assert start["status"] == 200
    assert dict(start["headers"])[b"content-length"] == b"11"
    assert body["body"] == b'{"ok":true}'
    assert not body.get("more_body", False)


def test_proxy_py_routes_keep_the_path_and_alternate_between_backends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bench.peers.proxypy_routes import ROUTE, BenchRoutes
    from proxy.http.parser import HttpParser

    monkeypatch.setenv(UPSTREAMS_ENV, "127.0.0.1:9101,127.0.0.1:9102")
    plugin = BenchRoutes("uid-1", argparse.Namespace(), None, None)
    assert plugin.routes() == [ROUTE]
    request = HttpParser.request(b"GET /bench/anything?q=1 HTTP/1.1\r\nHost: gw\r\n\r\n")
    urls = [plugin.handle_route(request, ROUTE) for _ in range(4)]
    assert {u.remainder for u in urls} == {b"/bench/anything?q=1"}
    ports = [u.port or 0 for u in urls]
    assert sorted(ports[:2]) == [9101, 9102]
    assert ports[:2] == ports[2:]
