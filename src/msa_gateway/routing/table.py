"""The compiled route table of one snapshot: find a request's route in a few dict lookups.

Routes are grouped by host (exact hosts in a dict, wildcards by suffix, then host-less routes)
and, inside a group, by the first path segment of their prefix; each list is sorted most
specific first, so the first route that matches wins (the rule of ``routing/config.py``).
A request is matched on its raw path, byte for byte, like the default ``/{service}/{path}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from msa_gateway.routing.splitter import Splitter

if TYPE_CHECKING:
    from msa_gateway.model import ServiceOptions
    from msa_gateway.proxy.request import ProxyRequest
    from msa_gateway.registry.snapshot import ServiceRoute
    from msa_gateway.routing.config import RouteConfig
    from msa_gateway.settings import GatewayConfig


class CompiledRoute:
    """One route of the table, with its target route in this snapshot (None: service not registered).

    A route with a ``split`` picks its target per request (``splitter``); ``target`` is then None.
    """

    __slots__ = ("config", "headers", "methods", "prefix", "service", "splitter", "strip", "target")

    def __init__(
        self, config: RouteConfig, target: ServiceRoute | None, splitter: Splitter | None = None
    ) -> None:
        self.config = config
        self.service = config.service
        self.prefix = config.prefix
        self.methods = config.methods
        self.headers = config.headers
        self.strip = len(config.prefix) if config.strip_prefix else 0
        self.target = target
        self.splitter = splitter

    def matches(self, path: bytes, method: str, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        """Return whether the request matches (the host was matched by the table)."""
        p = self.prefix
        if p != b"/" and not (path == p or (path.startswith(p) and path[len(p)] == 0x2F)):
            return False
        if self.methods is not None and method not in self.methods:
            return False
        for name, want in self.headers:
            if not any(n == name and (want is None or v == want) for n, v in headers):
                return False
        return True


def _first_segment(path: bytes) -> bytes:
    end = path.find(b"/", 1)
    return path[1:end] if end > 0 else path[1:]


class _Group:
    """The routes of one host pattern, by the first segment of their prefix."""

    __slots__ = ("by_segment", "root")

    def __init__(self, routes: Iterable[CompiledRoute]) -> None:
        self.by_segment: dict[bytes, list[CompiledRoute]] = {}
        self.root: list[CompiledRoute] = []
        for route in sorted(routes, key=lambda r: r.config.specificity, reverse=True):
            if route.prefix == b"/":
                self.root.append(route)
            else:
                self.by_segment.setdefault(_first_segment(route.prefix), []).append(route)

    def find(self, path: bytes, method: str, headers: Sequence[tuple[bytes, bytes]]) -> CompiledRoute | None:
        for route in self.by_segment.get(_first_segment(path), ()):
            if route.matches(path, method, headers):
                return route
        for route in self.root:
            if route.matches(path, method, headers):
                return route
        return None


def request_host(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """Return the request's ``Host`` in lower case without the port (None when absent)."""
    for name, value in headers:
        if name == b"host":
            host = value.lower()
            if host.startswith(b"["):
                return host[: host.find(b"]") + 1]
            colon = host.rfind(b":")
            return host[:colon] if colon >= 0 else host
    return None


class RouteTable:
    """Every declarative route of a snapshot."""

    __slots__ = ("any_host", "default_route", "exact", "routes", "wildcards")

    def __init__(self, routes: Sequence[CompiledRoute], default_route: bool = True) -> None:
        self.routes = tuple(routes)
        self.default_route = default_route
        hosts: dict[str, list[CompiledRoute]] = {}
        for route in routes:
            hosts.setdefault(route.config.host or "", []).append(route)
        self.any_host = _Group(hosts.pop("", []))
        self.exact = {h.encode(): _Group(rs) for h, rs in hosts.items() if not h.startswith("*.")}
        wild = [(h[1:].encode(), _Group(rs)) for h, rs in hosts.items() if h.startswith("*.")]
        self.wildcards = tuple(sorted(wild, key=lambda w: len(w[0]), reverse=True))

    def match(self, request: ProxyRequest) -> CompiledRoute | None:
        """Return the most specific route for ``request``, or None."""
        path, method, headers = request.raw_path, request.method, request.headers
        host = request_host(headers) if self.exact or self.wildcards else None
        if host:
            group = self.exact.get(host)
            if group is not None:
                hit = group.find(path, method, headers)
                if hit is not None:
                    return hit
            for suffix, group in self.wildcards:
                if host.endswith(suffix) and len(host) > len(suffix):
                    hit = group.find(path, method, headers)
                    if hit is not None:
                        return hit
        return self.any_host.find(path, method, headers)


def build_table(
    config: GatewayConfig, services: Mapping[str, ServiceRoute], split_counter: Any = None
) -> RouteTable:
    """Compile ``config.routes`` against this snapshot's services (a route's service may be missing).

    ``split_counter`` is ``gateway_route_split_total`` (labels route, service); None counts nothing.
    """
    compiled = []
    for route in config.routes:
        resolve = _Views(services, route.prefix.decode("ascii") if route.strip_prefix else "")
        if route.split is None:
            compiled.append(CompiledRoute(route, resolve(route.service, route.options)))
            continue
        name = route.name
        counter = (lambda s, n=name: split_counter.labels(n, s)) if split_counter is not None else _uncounted
        compiled.append(CompiledRoute(route, None, Splitter(route.split, resolve, counter)))
    return RouteTable(compiled, config.default_route)


class _Views:
    """A route's view of each service it names, made once (a service both split and matched: one view)."""

    def __init__(self, services: Mapping[str, ServiceRoute], prefix: str) -> None:
        self.services = services
        self.prefix = prefix
        self.made: dict[str, ServiceRoute | None] = {}

    def __call__(self, service: str, options: ServiceOptions) -> ServiceRoute | None:
        if service not in self.made:
            base = self.services.get(service)
            self.made[service] = base.variant(options, self.prefix) if base else None
        return self.made[service]


class _Uncounted:
    def inc(self) -> None:
        """Count nothing (tables built without metrics)."""


def _uncounted(service: str) -> _Uncounted:
    del service
    return _Uncounted()
