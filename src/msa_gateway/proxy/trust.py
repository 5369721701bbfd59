"""Which peers are trusted proxies, and the client address they vouch for.

``trusted_proxies`` (CIDR networks) decides whether a peer's ``X-Forwarded-*`` headers count;
both answers are cached per peer, since a gateway sees the same few proxies over and over.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=4096)
def _peer_trusted(peer: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def is_trusted(peer: str | None, networks: tuple[Network, ...]) -> bool:
    """Return whether ``peer`` lies in one of the trusted proxy ``networks``."""
    return bool(peer and networks and _peer_trusted(peer, networks))


@lru_cache(maxsize=4096)
def _client_from_chain(peer: str, forwarded_for: bytes, networks: tuple[Network, ...]) -> str:
    hops = [h.strip().decode("latin-1") for h in forwarded_for.split(b",")]
    client = peer
    for hop in reversed(hops):
        if not _peer_trusted(client, networks):
            break
        try:
            client = str(ipaddress.ip_address(hop))
        except ValueError:
            break  # a garbled hop: the last address a trusted proxy vouched for is the client
    return client


def client_address(
    peer: str | None, headers: Sequence[tuple[bytes, bytes]], networks: tuple[Network, ...]
) -> str:
    """Return the client's address: the peer, or, behind trusted proxies, the first hop they did not add.

    ``X-Forwarded-For`` is read right to left only while the hop that added an entry is trusted, so a
    client cannot pick its own address by sending the header (the rule of nginx's ``real_ip_recursive``).
    """
    if not peer:
        return ""
    if not is_trusted(peer, networks):
        return peer
    chain = [v for n, v in headers if n == b"x-forwarded-for"]
    return _client_from_chain(peer, b",".join(chain), networks) if chain else peer
