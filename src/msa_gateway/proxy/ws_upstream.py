"""The upstream side of a proxied WebSocket: the handshake with the instance (``websockets`` client).

The upgrade request carries the same headers as an HTTP request to the instance
(``headers.upstream_request_headers``: hop-by-hop dropped, ``X-Forwarded-*`` set by the gateway
and kept from the client only behind a trusted proxy), minus the client's ``Sec-WebSocket-*``
(the handshake is per hop: the gateway sends its own key, and the client's subprotocols through
``subprotocols``). The client library adds nothing of its own: no ``User-Agent``, no
compression offer, no proxy from the environment, no keepalive pings (the gateway's idle
timeout decides), and its ``Host`` gives way to the gateway's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import HeadersLike
from websockets.typing import Subprotocol

from msa_gateway.model import Instance, ServiceOptions

_SEC_WEBSOCKET = b"sec-websocket-"


class UpstreamSocket(ClientConnection):
    """A client connection whose handshake sends the gateway's ``Host`` rather than the URI's."""

    async def handshake(
        self, additional_headers: HeadersLike | None = None, user_agent_header: str | None = None
    ) -> None:
        """Send the handshake; the URI's ``Host`` is dropped (the gateway's is among the headers)."""
        connect_request = self.protocol.connect

        def without_host() -> Any:
            request = connect_request()
            del request.headers["Host"]
            return request

        self.protocol.connect = without_host  # type: ignore[method-assign]
        await super().handshake(additional_headers, None)


def handshake_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """Return the proxied request's headers for the upgrade, without the client's ``Sec-WebSocket-*``."""
    return [
        (k.decode("latin-1"), v.decode("latin-1")) for k, v in headers if not k.startswith(_SEC_WEBSOCKET)
    ]


async def open_upstream(
    instance: Instance,
    target: str,
    headers: Sequence[tuple[bytes, bytes]],
    subprotocols: Sequence[str],
    options: ServiceOptions,
) -> ClientConnection:
    """Connect to ``instance`` and complete the handshake; raises ``InvalidStatus`` on a refusal."""
    scheme = "wss" if instance.scheme == "https" else "ws"
    return await connect(
        f"{scheme}://{instance.address}{target}",
        additional_headers=handshake_headers(headers),
        user_agent_header=None,
        compression=None,
        proxy=None,
        open_timeout=options.timeouts.connect + options.timeouts.read,
        ping_interval=None,
        close_timeout=options.timeouts.connect,
        max_size=options.websocket.max_message_size,
        max_queue=4,
        subprotocols=[Subprotocol(p) for p in subprotocols] or None,
        create_connection=UpstreamSocket,
    )
