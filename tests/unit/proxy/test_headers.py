"""Pure header rules."""

from __future__ import annotations

from msa_gateway.proxy.headers import (
    connection_tokens,
    downstream_response_headers,
    request_id_from,
    upstream_request_headers,
)


def _up(headers: list[tuple[bytes, bytes]], trusted: bool = False, **kw: object) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = {}
    for k, v in upstream_request_headers(
        headers,
        peer="10.0.0.9",
        scheme="http",
        prefix="/svc",
        request_id="rid",
        upstream_host="10.1.1.1:80",
        trusted=trusted,
        **kw,  # type: ignore[arg-type]
    ):
        out.setdefault(k.lower(), []).append(v)
    return out


def test_hop_by_hop_and_connection_tokens_dropped() -> None:
    h = _up(
        [
            (b"connection", b"close, x-a"),
            (b"x-a", b"1"),
            (b"te", b"trailers"),
            (b"upgrade", b"ws"),
            (b"transfer-encoding", b"chunked"),
            (b"x-b", b"2"),
        ]
    )
    assert b"x-a" not in h and b"te" not in h and b"upgrade" not in h and b"transfer-encoding" not in h
    assert b"connection" not in h
    assert h[b"x-b"] == [b"2"]


def test_gateway_sets_forwarding_headers_for_untrusted_peer() -> None:
    h = _up(
        [(b"host", b"public.example"), (b"x-forwarded-for", b"1.2.3.4"), (b"x-forwarded-proto", b"https")]
    )
    assert h[b"x-forwarded-for"] == [b"10.0.0.9"]
    assert h[b"x-forwarded-proto"] == [b"http"]
    assert h[b"x-forwarded-host"] == [b"public.example"]
    assert h[b"x-forwarded-prefix"] == [b"/svc"]
    assert h[b"host"] == [b"10.1.1.1:80"]
    assert h[b"x-request-id"] == [b"rid"]


def test_trusted_peer_chain_is_appended() -> None:
    h = _up(
        [
            (b"x-forwarded-for", b"1.2.3.4"),
            (b"x-forwarded-for", b"5.6.7.8"),
            (b"x-forwarded-proto", b"https"),
        ],
        trusted=True,
    )
    assert h[b"x-forwarded-for"] == [b"1.2.3.4, 5.6.7.8, 10.0.0.9"]
    assert h[b"x-forwarded-proto"] == [b"https"]


def test_content_length_is_set_from_parsed_value_only() -> None:
    h = _up([(b"content-length", b"00012")], content_length=12)
    assert h[b"content-length"] == [b"12"]
    assert b"content-length" not in _up([(b"content-length", b"5")])


def test_connection_tokens() -> None:
    assert connection_tokens([(b"Connection", b"Keep-Alive, X-Foo , ")]) == {b"keep-alive", b"x-foo"}


def test_response_headers_keep_duplicates_and_drop_hops() -> None:
    out = downstream_response_headers(
        [
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Connection", b"x-h"),
            (b"X-H", b"v"),
            (b"Content-Length", b"3"),
            (b"X-Request-ID", b"up"),
        ],
        b"mine",
    )
    assert out == [
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"content-length", b"3"),
        (b"x-request-id", b"mine"),
    ]


def test_request_id_validation() -> None:
    assert request_id_from(b"abc-DEF_1.2:3") == "abc-DEF_1.2:3"
    assert len(request_id_from(None)) == 32
    assert request_id_from(b"a b") != "a b"
    assert request_id_from(b"x" * 500) != "x" * 500


def test_underscore_names_dropped_unless_allowed() -> None:
    headers = [(b"x_forwarded_for", b"1.2.3.4"), (b"x-custom_id", b"7"), (b"x-ok", b"1")]
    dropped = _up(headers)
    assert b"x_forwarded_for" not in dropped and b"x-custom_id" not in dropped and dropped[b"x-ok"] == [b"1"]
    allowed = _up(headers, allow_underscores=True)
    assert allowed[b"x_forwarded_for"] == [b"1.2.3.4"] and allowed[b"x-custom_id"] == [b"7"]
    assert allowed[b"x-forwarded-for"] == [b"10.0.0.9"]  # the gateway's own header is still its own


def test_http2_settings_proxy_connection_and_upgrade_are_hop_by_hop() -> None:
    h = _up(
        [(b"http2-settings", b"AAMAAABkAAQAAP__"), (b"proxy-connection", b"keep-alive"), (b"upgrade", b"h2c")]
    )
    assert not {b"http2-settings", b"proxy-connection", b"upgrade"} & set(h)


def test_response_location_rewritten_only_with_a_rewrite() -> None:
    from msa_gateway.model import Instance
    from msa_gateway.proxy.redirects import Redirects
    from tests.unit.proxy.test_redirects import Client

    inst = Instance(id="i", host="10.1.1.1", port=8001)
    raw = [(b"Location", b"http://10.1.1.1:8001/a"), (b"Link", b"<http://10.1.1.1:8001/b>")]
    redirects = Redirects(inst, Client([(b"host", b"gw.example")], "https"), "/svc")
    out = dict(downstream_response_headers(raw, b"rid", redirects))
    assert out[b"location"] == b"https://gw.example/svc/a"
    assert dict(downstream_response_headers(raw, b"rid"))[b"location"] == b"http://10.1.1.1:8001/a"
