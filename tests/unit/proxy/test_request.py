"""``ProxyRequest.client_ip``: the peer, or through trusted proxies the client they vouch for."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from msa_gateway.proxy.request import ProxyRequest
from msa_gateway.proxy.trust import Network


async def _never(*_: Any) -> Any:
    raise AssertionError("not used")


def request(peer: str | None, forwarded: bytes | None, trusted: tuple[Network, ...]) -> ProxyRequest:
    headers = [(b"host", b"t")] + ([(b"x-forwarded-for", forwarded)] if forwarded is not None else [])
    client = (peer, 50000) if peer is not None else None
    scope = {
        "method": "GET",
        "raw_path": b"/svc/x",
        "query_string": b"",
        "headers": headers,
        "client": client,
    }
    req = ProxyRequest(scope, _never, _never)
    req.trusted = trusted
    return req


LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "client"),
    [
        ("203.0.113.9", b"198.51.100.7", (), "203.0.113.9"),  # no trusted proxies: a forged header is ignored
        ("203.0.113.9", None, (), "203.0.113.9"),
        (None, b"198.51.100.7", (), ""),
        ("127.0.0.1", b"198.51.100.7", LOOPBACK, "198.51.100.7"),  # a trusted proxy vouches for the client
        ("203.0.113.9", b"198.51.100.7", LOOPBACK, "203.0.113.9"),  # an untrusted peer does not
    ],
)
def test_client_ip(
    peer: str | None, forwarded: bytes | None, trusted: tuple[Network, ...], client: str
) -> None:
    req = request(peer, forwarded, trusted)
    assert req.client_ip == client
    assert req.client_ip == client  # computed once, the same after
