"""Read a balancing key from a request: a header, a cookie, the client's IP or the path."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from msa_gateway.proxy.request import Headers, ProxyRequest

KeyReader = Callable[["ProxyRequest"], bytes | None]


def cookie_value(headers: Headers, name: bytes) -> bytes | None:
    """Return the value of cookie ``name`` in the request's ``Cookie`` headers, or None."""
    for header, value in headers:
        if header != b"cookie" or name not in value:
            continue
        for pair in value.split(b";"):
            key, sep, val = pair.strip().partition(b"=")
            if sep and key == name:
                return val.strip(b'"')
    return None


def key_reader(hash_key: str) -> KeyReader:
    """Return the function reading ``hash_key`` (validated by ``model.check_hash_key``) from a request."""
    kind, _, name = hash_key.partition(":")
    lname = name.lower().encode("latin-1")
    if kind == "header":

        def header(req: ProxyRequest) -> bytes | None:
            for key, value in req.headers:
                if key == lname:
                    return value
            return None

        return header
    if kind == "cookie":
        cname = name.encode("latin-1")
        return lambda req: cookie_value(req.headers, cname)
    if kind == "path":
        return lambda req: req.raw_path.partition(b"?")[0]
    return lambda req: None if req.peer is None else req.peer.encode("latin-1")
