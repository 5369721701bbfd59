"""Rewriting the instance's own URLs in Location, Content-Location and Refresh (pure)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import pytest

from msa_gateway.model import Instance
from msa_gateway.proxy.redirects import Redirects, client_base, instance_origins, rewrite_refresh, rewrite_url
from msa_gateway.proxy.trust import Network

ORIGINS = instance_origins("10.0.0.5", 8001)
BASE = b"https://gw.example/orders"


@pytest.mark.parametrize(
    ("url", "want"),
    [
        (b"http://10.0.0.5:8001/o/7?x=1", b"https://gw.example/orders/o/7?x=1"),
        (b"HTTP://10.0.0.5:8001/o", b"https://gw.example/orders/o"),
        (b"http://10.0.0.5:8001", b"https://gw.example/orders/"),
        (b"http://10.0.0.5:8001?q", b"https://gw.example/orders/?q"),
        (b"http://10.0.0.5:8001#f", b"https://gw.example/orders/#f"),
    ],
)
def test_own_origin_is_rewritten(url: bytes, want: bytes) -> None:
    assert rewrite_url(url, ORIGINS, BASE) == want


@pytest.mark.parametrize(
    "url",
    [
        b"/o/7",  # relative
        b"o/7",
        b"http://10.0.0.5:8002/o",  # another port
        b"http://10.0.0.5:80011/o",  # a longer port
        b"http://10.0.0.50:8001/o",  # another host sharing the prefix
        b"https://10.0.0.5:8001/o",  # another scheme
        b"http://example.com/o",
        b"//10.0.0.5:8001/o",
    ],
)
def test_other_urls_pass_untouched(url: bytes) -> None:
    assert rewrite_url(url, ORIGINS, BASE) is None


def test_port_80_may_be_left_out_and_ipv6_is_bracketed() -> None:
    assert rewrite_url(b"http://svc.internal/x", instance_origins("SVC.internal", 80), b"/s") == b"/s/x"
    assert rewrite_url(b"http://[::1]:9000/x", instance_origins("::1", 9000), b"/s") == b"/s/x"


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (b"5; url=http://10.0.0.5:8001/next", b"5; url=https://gw.example/orders/next"),
        (b"0;URL='http://10.0.0.5:8001/n'", b"0;URL='https://gw.example/orders/n'"),
        (b"5", None),
        (b"5; url=/relative", None),
    ],
)
def test_refresh_url_is_rewritten(value: bytes, want: bytes | None) -> None:
    assert rewrite_refresh(value, ORIGINS, BASE) == want


def test_client_base_uses_host_or_trusted_forwarded_values() -> None:
    headers = [
        (b"host", b"gw:8000"),
        (b"x-forwarded-host", b"public.example"),
        (b"x-forwarded-proto", b"https"),
    ]
    assert client_base(headers, "http", "/svc", trusted=False) == b"http://gw:8000/svc"
    assert client_base(headers, "http", "/svc", trusted=True) == b"https://public.example/svc"
    assert client_base([], "http", "/svc", trusted=False) == b"/svc"
    assert (
        client_base([(b"host", b"g"), (b"x-forwarded-proto", b"gopher")], "http", "/s", True) == b"http://g/s"
    )


@dataclass
class Client:
    """The request side a rewrite reads (``ClientSide``)."""

    headers: list[tuple[bytes, bytes]]
    scheme: str
    peer: str | None = None
    trusted: tuple[Network, ...] = ()

    @property
    def scope(self) -> dict[str, Any]:
        return {"scheme": self.scheme}


def test_redirects_rewrite_each_header_kind() -> None:
    r = Redirects(Instance(id="i", host="10.0.0.5", port=8001), Client([(b"host", b"gw")], "http"), "/orders")
    assert r.rewrite(b"location", b"http://10.0.0.5:8001/a") == b"http://gw/orders/a"
    assert r.rewrite(b"content-location", b"http://10.0.0.5:8001/b") == b"http://gw/orders/b"
    assert r.rewrite(b"refresh", b"1; url=http://10.0.0.5:8001/c") == b"1; url=http://gw/orders/c"
    assert r.rewrite(b"location", b"http://elsewhere/a") == b"http://elsewhere/a"


def test_redirects_use_forwarded_scheme_and_host_only_from_a_trusted_peer() -> None:
    instance = Instance(id="i", host="10.0.0.5", port=8001)
    headers = [(b"host", b"gw"), (b"x-forwarded-proto", b"https"), (b"x-forwarded-host", b"public.example")]
    trusted = Client(headers, "http", "10.9.9.9", (ipaddress.ip_network("10.9.0.0/16"),))
    untrusted = Client(headers, "http", "192.0.2.1", (ipaddress.ip_network("10.9.0.0/16"),))
    location = b"http://10.0.0.5:8001/a"
    assert Redirects(instance, trusted, "/o").rewrite(b"location", location) == b"https://public.example/o/a"
    assert Redirects(instance, untrusted, "/o").rewrite(b"location", location) == b"http://gw/o/a"
