"""Pure header rules for both directions of the proxy.

Request: end-to-end headers pass; hop-by-hop ones (``HTTP2-Settings``, ``Proxy-Connection`` and
``Upgrade`` too: no upgrade is forwarded), every header the ``Connection`` header names, the
client's framing headers, and names with ``_`` (unless allowed: a service that maps ``_`` to
``-`` would take ``X_Forwarded_For`` for the gateway's header; nginx drops them too) are
dropped; ``Host``, ``X-Forwarded-*`` and ``X-Request-ID`` are set by the gateway.
``X-Forwarded-*`` from the client are kept only when the peer is a trusted proxy. Response:
hop-by-hop and framing headers (except a ``Content-Length`` that matches the bytes) are dropped,
repeated headers such as ``Set-Cookie`` stay repeated, ``Content-Encoding`` is untouched, and
URLs pointing at the instance itself are rewritten (``proxy/redirects.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from random import getrandbits

from msa_gateway.proxy.redirects import REDIRECT_HEADERS, Redirects

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"http2-settings",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Set by the gateway itself, never copied from the client.
_REQUEST_OWN = frozenset(
    {
        b"host",
        b"content-length",
        b"expect",
        b"x-request-id",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-prefix",
        b"x-forwarded-port",
        b"x-real-ip",
        b"forwarded",
        b"traceparent",  # replaced by a child (or passed on as it was with TRACING=off): proxy/attempts.py
        b"tracestate",
    }
)
# Headers a policy may neither read a credential from nor set upstream: the gateway or the framing owns them.
GATEWAY_OWNED = HOP_BY_HOP | _REQUEST_OWN
_FORWARDED_KEEP = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"})
_RESPONSE_OWN = frozenset({b"x-request-id"})
_RESPONSE_DROP = HOP_BY_HOP | _RESPONSE_OWN  # one lookup per response header
# Connection values that name only hop-by-hop headers: nothing more to drop
_CONNECTION_PLAIN = frozenset({b"keep-alive", b"close", b"upgrade"})
_NOTHING: frozenset[bytes] = frozenset()
_UNDERSCORE = ord("_")  # an int: ``95 in name`` is ~10x faster than ``b"_" in name``
_REQUEST_ID_OK = re.compile(rb"^[A-Za-z0-9._:@/+=-]{1,200}$")


def new_request_id() -> str:
    """Return a fresh random request id (32 hex digits).

    An id only needs to be unique, not secret: ``random`` (reseeded in forked children) costs a
    fraction of the ``getrandom`` system call ``os.urandom`` makes on every request.
    """
    return getrandbits(128).to_bytes(16, "big").hex()  # twice as fast as a %-format


def request_id_from(value: bytes | None) -> str:
    """Return the client's request id when it is short and safe, else a new one."""
    if value is not None and _REQUEST_ID_OK.match(value):
        return value.decode("ascii")
    return new_request_id()


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Return the header names listed in every ``Connection`` header (lower-cased)."""
    names: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            names.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(names)


def upstream_request_headers(  # noqa: PLR0913, PLR0912 - one pass needs every input and a branch per header class; hot path: no context object
    headers: list[tuple[bytes, bytes]],
    *,
    peer: str | None,
    scheme: str,
    prefix: str,
    request_id: str,
    upstream_host: str,
    trusted: bool,
    pass_host_header: bool = False,
    content_length: int | None = None,
    allow_underscores: bool = False,
) -> list[tuple[bytes, bytes]]:
    """Return the headers to send upstream, in the client's order, then the gateway's own."""
    drop = connection_tokens(headers) if _has_connection(headers) else _NOTHING
    out: list[tuple[bytes, bytes]] = []
    client_host = b""
    prior_for: list[bytes] = []
    prior_proto = prior_host = None
    for name, value in headers:
        if _UNDERSCORE in name and not allow_underscores:
            continue
        if name not in GATEWAY_OWNED and not drop:  # most headers: passed on after one lookup
            out.append((name, value))
            continue
        if name in HOP_BY_HOP or name in drop:
            continue
        if name in _REQUEST_OWN:
            if name == b"host":
                client_host = value
            elif trusted and name in _FORWARDED_KEEP:
                if name == b"x-forwarded-for":
                    prior_for.append(value)
                elif name == b"x-forwarded-proto":
                    prior_proto = value
                elif name == b"x-forwarded-host":
                    prior_host = value
                else:
                    out.append((name, value))
            continue
        out.append((name, value))
    out.append(
        (b"host", client_host if pass_host_header and client_host else upstream_host.encode("latin-1"))
    )
    if peer:
        prior_for.append(peer.encode("latin-1"))
    if prior_for:
        out.append((b"x-forwarded-for", b", ".join(prior_for)))
    out.append((b"x-forwarded-proto", prior_proto or scheme.encode("latin-1")))
    fwd_host = prior_host or client_host
    if fwd_host:
        out.append((b"x-forwarded-host", fwd_host))
    if prefix:
        out.append((b"x-forwarded-prefix", prefix.encode("latin-1")))
    out.append((b"x-request-id", request_id.encode("latin-1")))
    if content_length is not None:
        out.append((b"content-length", b"%d" % content_length))
    return out


def _has_connection(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name == b"connection" for name, _ in headers)  # mypyc compiles it to a loop


def downstream_response_headers(
    raw_headers: list[tuple[bytes, bytes]], request_id: bytes, redirects: Redirects | None = None
) -> list[tuple[bytes, bytes]]:
    """Return the upstream's response headers fit to send to the client, plus ``x-request-id``."""
    out = []
    listed = False
    for name, value in raw_headers:
        lname = name.lower()
        if lname in _RESPONSE_DROP:
            if lname == b"connection" and not listed:  # "keep-alive" or "close" names nothing to drop
                listed = value.lower() not in _CONNECTION_PLAIN
            continue
        if redirects is not None and lname in REDIRECT_HEADERS:
            out.append((lname, redirects.rewrite(lname, value)))
        else:
            out.append((lname, value))
    if listed:  # drop what the Connection header names, when it names more than hop-by-hop headers
        drop = connection_tokens(raw_headers) - HOP_BY_HOP
        if drop:
            out = [(k, v) for k, v in out if k not in drop]
    out.append((b"x-request-id", request_id))
    return out
