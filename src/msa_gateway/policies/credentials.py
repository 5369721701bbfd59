"""What the authentication policies share: finding a credential, stripping it, the 401 challenge.

A credential is looked for in one pass over the request headers that also builds the list sent
upstream: the credential header (when it is to be stripped) and every header the gateway will
set itself from the verified identity (so a client cannot send its own ``X-Consumer-ID``) are
left out of it. Identity headers travel in ``ProxyRequest.extra_headers``.

Nothing here ever logs or echoes a credential.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from msa_gateway.policies.base import PolicyError
from msa_gateway.policies.parsing import header_name
from msa_gateway.proxy.headers import GATEWAY_OWNED

if TYPE_CHECKING:
    from msa_gateway.proxy.request import ProxyRequest

Headers = list[tuple[bytes, bytes]]
DEFAULT_REALM = "msa-gateway"
_QUOTED_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')  # RFC 6750: error_description is printable ASCII
_VALUE_UNSAFE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

# A policy may not read a credential from these or set them (a cookie header holds many values).
RESERVED_HEADERS = GATEWAY_OWNED | {b"cookie"}


def policy_header(raw: Any, key: str) -> bytes:
    """Return a header name a policy reads or sets (lower-cased), refusing the gateway's own."""
    name = header_name(raw, key)
    if name in RESERVED_HEADERS:
        raise PolicyError(key, f"{raw!r} is a header the gateway owns")
    return name


def realm(raw: Any, key: str = "realm") -> str:
    """Return the realm of the challenge: printable ASCII without quotes."""
    if not isinstance(raw, str) or not raw or _QUOTED_UNSAFE.search(raw):
        raise PolicyError(key, "must be a non-empty printable string without quotes or backslashes")
    return raw


def challenge(scheme: str, realm_: str, error: str | None = None, description: str | None = None) -> bytes:
    """Return a ``WWW-Authenticate`` value: ``Bearer realm="x", error="...", error_description="..."``."""
    parts = [f'{scheme} realm="{realm_}"']
    if error is not None:
        parts.append(f'error="{error}"')
    if description is not None:
        parts.append(f'error_description="{_QUOTED_UNSAFE.sub("", description)}"')
    return ", ".join(parts).encode("ascii")


def take_header(
    headers: Sequence[tuple[bytes, bytes]], name: bytes, strip: bool, drop: frozenset[bytes]
) -> tuple[bytes | None, Headers]:
    """Return the first ``name`` header's value and the headers to keep.

    The kept list leaves out ``name`` when ``strip`` is set, and every header in ``drop``.
    """
    found = None
    kept: Headers = []
    for item in headers:
        key = item[0]
        if key == name:
            if found is None:
                found = item[1]
            if strip:
                continue
        elif key in drop:
            continue
        kept.append(item)
    return found, kept


def take_query(query: bytes, name: bytes) -> tuple[bytes | None, bytes]:
    """Return the first ``name`` query parameter's decoded value and the query without it."""
    if not query:
        return None, query
    found = None
    kept = []
    for pair in query.split(b"&"):
        key, _, value = pair.partition(b"=")
        if unquote_to_bytes(key.replace(b"+", b" ")) == name:
            if found is None:
                found = unquote_to_bytes(value.replace(b"+", b" "))
            continue
        kept.append(pair)
    if found is None:
        return None, query
    return found, b"&".join(kept)


def identity_value(value: object) -> bytes | None:
    """Return a claim or consumer as a header value; None when it cannot be one safely."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str | int | float):
        text = str(value)
    elif isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        text = ",".join(str(v) for v in value)
    else:
        return None
    data = text.encode("utf-8")
    if _VALUE_UNSAFE.search(data) or len(data) > 8192:
        return None
    return data


def add_upstream_headers(request: ProxyRequest, items: Sequence[tuple[bytes, bytes]]) -> None:
    """Queue headers for the upstream request (``ProxyRequest.extra_headers``)."""
    if request.extra_headers is None:
        request.extra_headers = list(items)
    else:
        request.extra_headers.extend(items)
