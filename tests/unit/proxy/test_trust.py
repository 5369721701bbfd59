"""Trusted proxies: which peers count, and the client address behind them."""

from __future__ import annotations

import ipaddress

from msa_gateway.proxy.trust import client_address, is_trusted


def test_trusted_networks() -> None:
    nets = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert is_trusted("10.2.3.4", nets)
    assert is_trusted("::1", nets)
    assert not is_trusted("11.0.0.1", nets)
    assert not is_trusted("not-an-ip", nets)
    assert not is_trusted("10.2.3.4", ())
    assert not is_trusted(None, nets)


def test_client_address_reads_forwarded_for_only_through_trusted_hops() -> None:
    nets = (ipaddress.ip_network("10.0.0.0/8"),)
    chain = [(b"x-forwarded-for", b"6.6.6.6, 203.0.113.7, 10.0.0.2")]
    assert client_address("10.0.0.1", chain, nets) == "203.0.113.7"
    assert client_address("192.0.2.1", chain, nets) == "192.0.2.1"  # an untrusted peer: its header is ignored
    assert client_address("10.0.0.1", [], nets) == "10.0.0.1"
    assert client_address(None, chain, nets) == ""
