"""The upstream seam: send one request to one instance, get a streaming response back.

``UpstreamClient`` is the one-method seam between the proxy and the network (as httpcore's
``handle_async_request``). Implementations pool keep-alive HTTP/1.1 connections per instance,
never decompress, never keep cookies, never follow redirects and add no headers of their own.
They raise only ``UpstreamError``/``UpstreamTimeout`` whose ``kind`` is one of the
``FailureKind`` values in ``proxy/retry.py`` and whose ``request_sent`` says whether any byte
of the request may have reached the instance (what decides whether a retry is safe).
Clients are picked by name from ``UPSTREAM_CLIENTS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Protocol

import aiohttp
from yarl import URL

from msa_gateway.errors import UpstreamError, UpstreamTimeout
from msa_gateway.model import Instance, ServiceOptions
from msa_gateway.tasks import Supervisor
from msa_gateway.write_batch import DIRECT, WriteBatch

log = logging.getLogger("msa_gateway.upstream")

Headers = list[tuple[bytes, bytes]]


class UpstreamResponse(Protocol):
    """A response whose head has arrived; the body is read chunk by chunk."""

    status: int
    headers: list[tuple[bytes, bytes]]  # a list: the compiled code iterates it natively

    async def read(self) -> bytes:
        """Return the next chunk of the body as it arrives; ``b""`` at the end."""
        ...

    def at_eof(self) -> bool:
        """Return whether the whole body has been read."""
        ...

    def release(self) -> None:
        """Give the connection back to the pool when the body was read whole, else close it."""
        ...

    def close(self) -> None:
        """Abort: close the connection now (a pending ``read`` fails)."""
        ...


class UpstreamClient(Protocol):
    """Sends requests to instances over pooled connections."""

    name: str

    @classmethod
    def create(cls, tasks: Supervisor | None, writes: WriteBatch = DIRECT) -> UpstreamClient:
        """Return a new client that starts its background tasks (if any) on ``tasks``.

        ``writes``: the loop's ``WriteBatch``, for a client that writes to sockets itself.
        """
        ...

    async def send(  # noqa: PLR0913 - the UpstreamClient seam: the parts of one HTTP request, no per-attempt object
        self,
        instance: Instance,
        options: ServiceOptions,
        method: str,
        target: str,
        headers: Headers,
        body: bytes | AsyncIterator[bytes] | None,
        content_length: int | None,
    ) -> UpstreamResponse:
        """Send the head, stream ``body`` (chunked without ``content_length``); return the response head.

        ``body`` may be bytes already read whole (a small body): then it is sent with the head.
        """
        ...

    def retain(self, addresses: set[str]) -> None:
        """Close pooled connections to instances whose address is not in ``addresses``."""
        ...

    def release(self, addresses: Iterable[str]) -> None:
        """Close pooled connections to ``addresses`` (no instance has them any more)."""
        ...

    async def aclose(self) -> None:
        """Close every connection."""
        ...


# The client table: ``UPSTREAM_CLIENT`` names an import string, loaded on demand; the setting's
# allowed values are these keys. A new client is one module plus one entry here (and in the
# TYPE_CHECKING tuple below, so mypy checks it against the protocol).
UPSTREAM_CLIENTS: dict[str, str] = {
    "aiohttp": "msa_gateway.proxy.upstream:AiohttpClient",
    "native": "msa_gateway.proxy.native:NativeClient",
}


def create_client(name: str, tasks: Supervisor | None = None, writes: WriteBatch = DIRECT) -> UpstreamClient:
    """Return a new upstream client of the implementation called ``name``, starting tasks on ``tasks``."""
    module, _, attr = UPSTREAM_CLIENTS[name].partition(":")
    cls: type[UpstreamClient] = getattr(importlib.import_module(module), attr)
    return cls.create(tasks, writes)


# --- aiohttp implementation ---------------------------------------------------------------

SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
KEEPALIVE_TIMEOUT = 15.0


def translate(exc: BaseException, request_sent: bool) -> UpstreamError:
    """Return the gateway error for an aiohttp failure (no address in the detail)."""
    err: UpstreamError
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        err = UpstreamTimeout("the service did not accept a connection in time", "connect_timeout")
        request_sent = False
    elif isinstance(exc, aiohttp.SocketTimeoutError | asyncio.TimeoutError | TimeoutError):
        err = UpstreamTimeout("the service did not answer in time", "read_timeout")
    elif isinstance(exc, aiohttp.ClientConnectorError):
        err = UpstreamError("the service refused the connection", "connect_refused")
        request_sent = False
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        err = UpstreamError("the service closed the connection without answering", "reset")
    elif isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        err = UpstreamError("the service sent an invalid response", "protocol_error")
    else:
        err = UpstreamError("the connection to the service was reset", "reset")
    err.request_sent = request_sent
    return err


class _AiohttpResponse:
    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers: list[tuple[bytes, bytes]] = list(resp.raw_headers)

    async def read(self) -> bytes:
        try:
            return await self._resp.content.readany()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise translate(exc, True) from None

    def at_eof(self) -> bool:
        return self._resp.content.at_eof()

    def release(self) -> None:
        self._resp.release()

    def close(self) -> None:
        self._resp.close()


class AiohttpClient:
    """Upstream client on aiohttp: one session per pool size, connections pooled per instance."""

    name = "aiohttp"

    @classmethod
    def create(cls, tasks: Supervisor | None, writes: WriteBatch = DIRECT) -> AiohttpClient:
        """Return a new client (aiohttp runs no task of its own and writes to its sockets itself)."""
        del writes
        return cls(tasks=tasks)

    def __init__(self, *, tasks: Supervisor | None = None) -> None:
        del tasks  # aiohttp runs no background task of the gateway's
        self._sessions: dict[int, aiohttp.ClientSession] = {}
        self._timeouts: dict[tuple[float, float, float | None], aiohttp.ClientTimeout] = {}

    def _session(self, limit: int) -> aiohttp.ClientSession:
        session = self._sessions.get(limit)
        if session is None:
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=limit, keepalive_timeout=KEEPALIVE_TIMEOUT, ttl_dns_cache=10
            )
            session = self._sessions[limit] = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=SKIP_AUTO_HEADERS,
                timeout=aiohttp.ClientTimeout(total=None),
                read_bufsize=2**16,
                max_line_size=16384,
                max_field_size=16384,
            )
            # aiohttp silently re-sends idempotent requests once after a reset; retries are the
            # proxy's decision (retry policy, budget, outlier detection), so turn that off.
            session._retry_connection = False
        return session

    def _timeout(self, options: ServiceOptions) -> aiohttp.ClientTimeout:
        t = options.timeouts
        key = (t.connect, t.read, t.total)
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(
                total=None, sock_connect=t.connect, sock_read=t.read
            )
        return timeout

    async def send(  # noqa: PLR0913 - the UpstreamClient seam: the parts of one HTTP request, no per-attempt object
        self,
        instance: Instance,
        options: ServiceOptions,
        method: str,
        target: str,
        headers: Headers,
        body: bytes | AsyncIterator[bytes] | None,
        content_length: int | None,
    ) -> UpstreamResponse:
        """Send through aiohttp; map its exceptions to gateway errors."""
        session = self._session(options.max_connections_per_instance)
        str_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
        try:
            resp = await session.request(
                method,
                URL(instance.base_url + target, encoded=True),
                headers=str_headers,
                data=body,
                allow_redirects=False,
                timeout=self._timeout(options),
                chunked=True if body is not None and content_length is None else None,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise translate(exc, True) from None
        return _AiohttpResponse(resp)

    def retain(self, addresses: set[str]) -> None:
        """Leave idle connections to expire (aiohttp closes them after the keep-alive timeout)."""

    def release(self, addresses: Iterable[str]) -> None:
        """Leave idle connections to expire (aiohttp closes them after the keep-alive timeout)."""

    async def aclose(self) -> None:
        """Close every session."""
        for session in self._sessions.values():
            with contextlib.suppress(Exception):
                await session.close()
        self._sessions.clear()


if TYPE_CHECKING:  # mypy checks every table entry against the protocol
    from msa_gateway.proxy.native import NativeClient

    _CLIENTS: tuple[type[UpstreamClient], ...] = (AiohttpClient, NativeClient)
