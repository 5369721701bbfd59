"""A minimal ``ProxyRequest`` for the balancers and policy stages that read the request (and never its body)."""

from __future__ import annotations

from typing import Any

from msa_gateway.proxy.request import ProxyRequest


async def _never() -> dict[str, Any]:
    raise AssertionError("the body is never read here")


async def _no_send(message: dict[str, Any]) -> None:
    raise AssertionError("nothing is sent from here")


def request(
    path: bytes = b"/svc/x", headers: list[tuple[bytes, bytes]] | None = None, peer: str = "10.0.0.1"
) -> ProxyRequest:
    """Return a GET request for ``path`` from ``peer``."""
    scope = {
        "type": "http",
        "method": "GET",
        "path": path.decode(),
        "raw_path": path,
        "query_string": b"",
        "headers": headers or [],
        "client": (peer, 5000),
        "scheme": "http",
    }
    return ProxyRequest(scope, _never, _no_send)
