"""``ip_rules``: allow and deny CIDR lists on the client's address.

The address is the one ``trusted_proxies`` resolves (``proxy/trust.client_address``): the peer,
or behind trusted proxies the first ``X-Forwarded-For`` hop they did not add, so a client cannot
pass a rule by sending the header itself. ``deny`` wins over ``allow``; a non-empty ``allow``
refuses everyone it does not list. A refusal is a 403 JSON error.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from msa_gateway.errors import Forbidden
from msa_gateway.policies.base import ConfigStage, PolicyError
from msa_gateway.policies.parsing import Network, block, networks

if TYPE_CHECKING:
    from msa_gateway.policies.base import Reply
    from msa_gateway.proxy.request import ProxyRequest


@dataclass(frozen=True, slots=True)
class IpRulesConfig:
    """The parsed ``ip_rules`` block."""

    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()

    def admits(self, address: str) -> bool:
        """Return whether ``address`` passes (an address that does not parse passes only an empty allow)."""
        return _admits(address, self.allow, self.deny)


@lru_cache(maxsize=8192)
def _admits(address: str, allow: tuple[Network, ...], deny: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return not allow and not deny
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1 to the rules
    if any(ip in net for net in deny):
        return False
    return not allow or any(ip in net for net in allow)


def parse(raw: Any) -> IpRulesConfig:
    """Parse ``{allow: [cidr...], deny: [cidr...]}``; at least one list must be given."""
    data = block(raw, {"allow", "deny"})
    config = IpRulesConfig(
        allow=networks(data.get("allow", []), "allow"), deny=networks(data.get("deny", []), "deny")
    )
    if not config.allow and not config.deny:
        raise PolicyError("allow", "give at least one of allow or deny")
    return config


class IpRules(ConfigStage):
    """The request stage: 403 for a client the rules refuse."""

    name = "ip_rules"
    __slots__ = ()
    config: IpRulesConfig

    async def __call__(self, request: ProxyRequest) -> Reply | None:
        """Pass, or raise ``Forbidden``."""
        if not self.config.admits(request.client_ip):
            raise Forbidden("the client address is not allowed")
        return None
