"""What a proxied request is made of, read once from the ASGI scope: the facts every step shares.

``ProxyRequest`` is built before routing and never changes after the route is matched, except
for the fields that request stages may set: ``route``, ``consumer`` (the identity an
authentication stage established), ``headers`` (a stage may replace the list, e.g. to strip a
credential), ``rest`` (path transforms) and ``extra_headers`` (headers for upstream, appended after
the header rules of ``proxy/headers.py`` so a client's ``Connection`` header cannot remove them;
None when unused); ``rate_limit`` holds the RateLimit headers a rate-limit stage adds to the
answer. One pass over the headers finds the request id and the body framing. Routing
reads the snapshot once: without ``routes:`` it is one dict lookup on the first path segment, as
it always was; with them, the route table is tried first and ``/{service}/{path}`` is the fallback.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from msa_gateway.errors import BadRequest, NoHealthyInstance, ServiceNotFound
from msa_gateway.proxy.headers import request_id_from
from msa_gateway.proxy.paths import check_segments, split_service, upstream_target
from msa_gateway.proxy.trust import Network, client_address

if TYPE_CHECKING:
    from msa_gateway.observability.tracing import Trace
    from msa_gateway.registry.snapshot import ServiceRoute, Snapshot
    from msa_gateway.routing.table import RouteTable

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


class ProxyRequest:
    """One client request on its way through the proxy."""

    __slots__ = (
        "_client_ip",
        "body_length",
        "chunked",
        "consumer",
        "content_length",
        "extra_headers",
        "has_body",
        "headers",
        "method",
        "peer",
        "rate_limit",
        "raw_path",
        "receive",
        "request_id",
        "rest",
        "route",
        "scope",
        "send",
        "started",
        "trace",
        "traceparent",
        "tracestate",
        "trusted",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.started = perf_counter()
        self.scope = scope
        self.receive = receive
        self.send = send
        self.method: str = scope["method"]
        self.raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        client = scope.get("client")
        self.peer: str | None = client[0] if client else None
        self.headers: Headers = scope["headers"]
        self.route: ServiceRoute | None = None
        self.consumer: str | None = None  # set by an authentication stage
        self.extra_headers: Headers | None = None
        self.rate_limit: tuple[tuple[bytes, bytes], ...] | None = None  # RateLimit headers for the client
        self.rest = b"/"
        self.trusted: tuple[Network, ...] = ()  # the snapshot's trusted_proxies, set by ``match``
        self._client_ip: str | None = None
        # One C pass over the headers (the last of a repeated name wins, as a loop would have it).
        found = dict(self.headers)
        self.traceparent: bytes | None = found.get(b"traceparent")
        self.tracestate: bytes | None = found.get(b"tracestate")
        self.trace: Trace | None = None
        length = found.get(b"content-length")
        self.content_length: int | None = None if length is None else int(length) if length.isdigit() else -1
        self.chunked = b"transfer-encoding" in found
        rid = found.get(b"x-request-id")
        self.request_id = request_id_from(rid)
        # whether a body follows the head (chunked, or a non-zero Content-Length), and its declared
        # length (None when chunked or absent): read on every request, so stored, not properties
        self.has_body = self.chunked or bool(self.content_length)
        self.body_length = None if self.chunked else self.content_length

    @property
    def target(self) -> str:
        """Return the request target to send upstream: the path after the service, plus the query."""
        return upstream_target(self.rest, self.scope["query_string"])

    @property
    def client_ip(self) -> str:
        """Return the client's address as ``trusted_proxies`` resolves it ("" when unknown); computed once."""
        ip = self._client_ip
        if ip is None:
            # no trusted proxies (the default): the peer, without the general rule's calls
            trusted = self.trusted
            ip = client_address(self.peer, self.headers, trusted) if trusted else self.peer or ""
            self._client_ip = ip
        return ip

    def match(self, snapshot: Snapshot) -> ServiceRoute:
        """Find the route on the raw path; raise 404/400 when there is none or the request is unusable."""
        self.trusted = snapshot.trusted_proxies
        table = snapshot.routes
        if table is not None:
            route = self._match_table(table)
            if route is not None:
                return route
        name, rest = split_service(self.raw_path)
        route = snapshot.services.get(name)
        if route is None:
            raise ServiceNotFound(
                f"no service is registered under {name!r}" if name else "no service in path"
            )
        self.route = route  # counted under the service from here on, even when refused below
        check_segments(rest)
        if self.content_length is not None and self.content_length < 0:
            raise BadRequest("invalid Content-Length")
        self.rest = rest
        return route

    def _match_table(self, table: RouteTable) -> ServiceRoute | None:
        """Return the declarative route's target, None to fall back to ``/{service}/{path}``."""
        hit = table.match(self)
        if hit is None:
            if table.default_route:
                return None
            raise ServiceNotFound("no route matches this request")
        route = hit.target if hit.splitter is None else hit.splitter.pick(self.headers)
        if route is None:
            raise NoHealthyInstance(f"no instance of {hit.service!r} is registered")
        self.route = route
        check_segments(self.raw_path)
        if self.content_length is not None and self.content_length < 0:
            raise BadRequest("invalid Content-Length")
        self.rest = (self.raw_path[hit.strip :] or b"/") if hit.strip else self.raw_path
        return route
