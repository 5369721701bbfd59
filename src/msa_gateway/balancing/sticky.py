"""Sticky sessions: a cookie set by the gateway names the instance that answered first.

The cookie's value is an opaque token, a hash of the service and the instance's id and address,
never the address itself. A request carrying the token of an eligible instance goes there; when
that instance is gone (or unhealthy, or full), the request is balanced by least request and the
answer sets the cookie anew. The cookie is scoped to the service's path prefix, ``HttpOnly``,
``SameSite=Lax`` and, on HTTPS, ``Secure``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar

from msa_gateway.balancing.keys import cookie_value
from msa_gateway.balancing.least_request import LeastRequest
from msa_gateway.model import BalancerOptions, Instance

if TYPE_CHECKING:
    from msa_gateway.proxy.request import Headers, ProxyRequest


def instance_token(service: str, instance: Instance) -> bytes:
    """Return the opaque cookie value naming ``instance`` of ``service``."""
    data = f"{service}|{instance.id}|{instance.address}".encode()
    return hashlib.blake2b(data, digest_size=12).hexdigest().encode("ascii")


class StickyCookie:
    """The response stage of one answered request: set the cookie unless it already names the instance."""

    name: ClassVar[str] = "sticky"
    __slots__ = ("_balancer", "_token")

    def __init__(self, balancer: Sticky, token: bytes) -> None:
        self._balancer = balancer
        self._token = token

    def __call__(self, request: ProxyRequest, status: int, headers: Headers) -> Headers:
        """Append ``Set-Cookie`` when the client's cookie is missing or names another instance."""
        b = self._balancer
        if cookie_value(request.headers, b.cookie) != self._token:
            headers.append((b"set-cookie", b.set_cookie(self._token, request)))
        return headers


class Sticky:
    """Send a client back to the instance its cookie names; balance by least request otherwise."""

    name: ClassVar[str] = "sticky"
    __slots__ = ("_fallback", "_max_age", "_tokens", "cookie")

    def __init__(self, load: Callable[[Instance], int], options: BalancerOptions) -> None:
        self._fallback = LeastRequest(load)
        self.cookie = options.cookie.encode("latin-1")
        self._max_age = options.cookie_max_age
        self._tokens: dict[int, bytes] = {}  # id(instance) -> token; the snapshot keeps them alive

    @classmethod
    def create(cls, load: Callable[[Instance], int]) -> Sticky:
        """Return a balancer with the default cookie."""
        return cls(load, BalancerOptions())

    @classmethod
    def configured(cls, load: Callable[[Instance], int], options: BalancerOptions) -> Sticky:
        """Return a balancer with the service's cookie name and max age."""
        return cls(load, options)

    def token(self, instance: Instance, service: str = "") -> bytes:
        """Return the token of ``instance`` (computed once per instance)."""
        token = self._tokens.get(id(instance))
        if token is None:
            token = self._tokens[id(instance)] = instance_token(service, instance)
        return token

    def pick(self, eligible: Sequence[Instance]) -> Instance:
        """Return the less loaded of two random instances (no request, no cookie)."""
        return self._fallback.pick(eligible)

    def pick_for(self, eligible: Sequence[Instance], request: ProxyRequest) -> Instance:
        """Return the instance the request's cookie names when eligible, else balance."""
        wanted = cookie_value(request.headers, self.cookie)
        if wanted is not None:
            service = request.route.name if request.route is not None else ""
            for inst in eligible:
                if self.token(inst, service) == wanted:
                    return inst
        return self._fallback.pick(eligible)

    def response_stage(self, instance: Instance, service: str) -> StickyCookie:
        """Return the stage that sets the cookie naming ``instance`` on the answer."""
        return StickyCookie(self, self.token(instance, service))

    def set_cookie(self, token: bytes, request: ProxyRequest) -> bytes:
        """Return the ``Set-Cookie`` value carrying ``token``."""
        prefix = request.route.prefix if request.route is not None else "/"
        value = b"%s=%s; Path=%s; HttpOnly; SameSite=Lax" % (self.cookie, token, prefix.encode("latin-1"))
        if self._max_age is not None:
            value += b"; Max-Age=%d" % self._max_age
        if request.scope.get("scheme") in ("https", "wss"):
            value += b"; Secure"
        return value

    def done(self, instance: Instance) -> None:
        """Do nothing: the caps count the end of the request."""
