"""Rewrite response URLs that point at the instance itself (nginx's ``proxy_redirect default``).

An instance that answers ``Location: http://10.0.0.5:8001/orders/7`` tells the client an address
the client cannot reach, and leaks it. ``Location``, ``Content-Location`` and the URL of
``Refresh`` are rewritten when they point at the instance's own ``host:port`` (scheme ``http``,
host compared case-insensitively, ``:80`` optional): the origin becomes the client-facing scheme
and host plus the service prefix, ``http://gateway.example/orders-service/orders/7``. Relative
URLs and URLs of other hosts pass untouched. Without a ``Host`` from the client, the result is
path-absolute (``/orders-service/orders/7``).

The client-facing scheme and host are the request's own, or ``X-Forwarded-Proto`` /
``X-Forwarded-Host`` when the peer is a trusted proxy. Everything is computed only when a
response carries one of these headers.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Protocol

from msa_gateway.model import Instance
from msa_gateway.proxy.trust import Network, is_trusted

REDIRECT_HEADERS = frozenset({b"location", b"content-location", b"refresh"})
_URL_END = frozenset(b"/?#")


@lru_cache(maxsize=4096)
def instance_origins(host: str, port: int) -> tuple[bytes, ...]:
    """Return the lower-cased origins by which an instance may name itself."""
    name = host.lower().encode("idna" if not host.isascii() else "ascii")
    if b":" in name and not name.startswith(b"["):
        name = b"[" + name + b"]"  # an IPv6 literal
    origins = [b"http://%b:%d" % (name, port)]
    if port == 80:
        origins.append(b"http://" + name)
    return tuple(origins)


def client_base(headers: Sequence[tuple[bytes, bytes]], scheme: str, prefix: str, trusted: bool) -> bytes:
    """Return ``scheme://host/prefix`` as the client sees it (just ``/prefix`` without a Host)."""
    host = proto = None
    for name, value in headers:
        if name == b"host" and host is None:
            host = value
        elif trusted and name == b"x-forwarded-host":
            host = value.split(b",", 1)[0].strip() or host
        elif trusted and name == b"x-forwarded-proto":
            proto = value.split(b",", 1)[0].strip().lower()
    path = prefix.encode("latin-1")
    if not host:
        return path
    if proto not in (b"http", b"https"):
        proto = scheme.encode("latin-1")
    return proto + b"://" + host + path


def rewrite_url(url: bytes, origins: tuple[bytes, ...], base: bytes) -> bytes | None:
    """Return ``url`` with an instance origin replaced by ``base``, or None when it is not the instance's."""
    for origin in origins:
        n = len(origin)
        if url[:n].lower() == origin and (len(url) == n or url[n] in _URL_END):
            rest = url[n:]
            return base + (rest if rest.startswith(b"/") else b"/" + rest)
    return None


def rewrite_refresh(value: bytes, origins: tuple[bytes, ...], base: bytes) -> bytes | None:
    """Rewrite the ``url=`` part of a ``Refresh`` value (``5; url=http://...``), quoted or not."""
    at = value.lower().find(b"url=")
    if at < 0:
        return None
    start = at + 4
    quote = value[start : start + 1]
    if quote in (b'"', b"'"):
        end = value.find(quote, start + 1)
        end = len(value) if end < 0 else end
        start += 1
    else:
        end = len(value)
    new = rewrite_url(value[start:end].strip(), origins, base)
    return None if new is None else value[:start] + new + value[end:]


class ClientSide(Protocol):
    """What of the request a rewrite needs (``ProxyRequest`` has it): read only when one happens.

    ``peer``'s ``X-Forwarded-*`` headers count when it lies in ``trusted`` (``trusted_proxies``).
    """

    @property
    def headers(self) -> Sequence[tuple[bytes, bytes]]: ...
    @property
    def peer(self) -> str | None: ...
    @property
    def trusted(self) -> tuple[Network, ...]: ...
    @property
    def scope(self) -> dict[str, Any]: ...


class Redirects:
    """One response's redirect rewrite: the instance it came from and the request it answers.

    Built for every proxied response, used by few: it only keeps its inputs until ``rewrite``.
    """

    __slots__ = ("_base", "instance", "prefix", "request")

    def __init__(self, instance: Instance, request: ClientSide, prefix: str) -> None:
        self.instance = instance
        self.request = request
        self.prefix = prefix
        self._base: bytes | None = None

    def rewrite(self, name: bytes, value: bytes) -> bytes:
        """Return ``value`` of response header ``name`` (one of ``REDIRECT_HEADERS``), rewritten if needed."""
        origins = instance_origins(self.instance.host, self.instance.port)
        if self._base is None:
            req = self.request
            trusted = is_trusted(req.peer, req.trusted)
            self._base = client_base(req.headers, req.scope.get("scheme", "http"), self.prefix, trusted)
        if name == b"refresh":
            new = rewrite_refresh(value, origins, self._base)
        else:
            new = rewrite_url(value.strip(), origins, self._base)
        return value if new is None else new
