"""Small checks shared by the policies' ``parse`` functions; each raises ``PolicyError(key, reason)``.

A policy block is YAML already loaded; these turn its pieces into frozen values and name the key
that is wrong, so that start-up can report ``file: ...policies.<name>.<key>: reason``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from msa_gateway.policies.base import PolicyError

TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")  # an HTTP header name (RFC 9110 token)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def block(raw: Any, known: set[str], where: str = "") -> dict[str, Any]:
    """Return ``raw`` as a mapping whose keys are all in ``known``."""
    if not isinstance(raw, dict):
        raise PolicyError(where or "(block)", "must be a mapping")
    for key in raw:
        if key not in known:
            raise PolicyError(
                f"{where}.{key}" if where else str(key), f"unknown key; known: {', '.join(sorted(known))}"
            )
    return raw


def strings(raw: Any, key: str) -> tuple[str, ...]:
    """Return a list of non-empty strings as a tuple."""
    if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
        raise PolicyError(key, "must be a list of non-empty strings")
    return tuple(raw)


def header_name(raw: Any, key: str) -> bytes:
    """Return a header name, lower-cased, as the ASGI server gives it."""
    if not isinstance(raw, str) or not TOKEN.match(raw):
        raise PolicyError(key, f"{raw!r} is not a header name")
    return raw.lower().encode("ascii")


def header_value(raw: Any, key: str) -> str:
    """Return a header value: text without control characters (no header injection)."""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise PolicyError(key, "must be a string")
    value = str(raw)
    if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
        raise PolicyError(key, "must not contain control characters")
    return value


def networks(raw: Any, key: str) -> tuple[Network, ...]:
    """Return a list of CIDRs (a bare address is a /32 or /128)."""
    out = []
    for i, item in enumerate(strings(raw, key)):
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise PolicyError(f"{key}.{i}", f"{item!r} is not an IP network") from None
    return tuple(out)


def number(raw: Any, key: str, low: int, high: int) -> int:
    """Return an integer within [low, high]."""
    if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
        raise PolicyError(key, f"must be an integer {low}-{high}")
    return raw
