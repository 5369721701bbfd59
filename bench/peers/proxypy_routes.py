"""The ``proxy.py`` peer: the PyPI ``proxy.py`` server with its reverse proxy core and this route plugin.

proxy.py's reverse proxy (``--enable-reverse-proxy``) takes its routes from ``ReverseProxyBasePlugin``
subclasses given with ``--plugins``; the bundled ``proxy.plugin.ReverseProxyPlugin`` is an example with
routes to httpbingo.org hard-wired, so the benchmark brings its own: every path under ``/bench/`` goes to
the backends in ``BENCH_UPSTREAMS`` (``host:port,host:port``), path and query kept. proxy.py makes one plugin
per client connection, so round robin runs per connection, starting at a backend picked by the connection's
uid (64 connections spread over both backends).
"""

from __future__ import annotations

import os
import zlib
from typing import Any

from proxy.http import Url
from proxy.http.parser import HttpParser
from proxy.http.server import ReverseProxyBasePlugin

from bench.peers import UPSTREAMS_ENV
from bench.peers.aiohttp_proxy import parse_upstreams

ROUTE = r"/bench/"


class BenchRoutes(ReverseProxyBasePlugin):
    """Route ``/bench/...`` to the benchmark's backends, round robin."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bases = [u.encode() for u in parse_upstreams(os.environ.get(UPSTREAMS_ENV, ""))]
        self.turn = zlib.crc32(str(self.uid).encode())

    def routes(self) -> list[str | tuple[str, list[bytes]]]:
        """One dynamic route: ``handle_route`` picks the backend."""
        return [ROUTE]

    def handle_route(self, request: HttpParser, pattern: Any) -> Url:
        """Return the next backend's URL with the request's own path (proxy.py sends its remainder)."""
        self.turn += 1
        assert request.path is not None
        return Url.from_bytes(self.bases[self.turn % len(self.bases)] + request.path)
