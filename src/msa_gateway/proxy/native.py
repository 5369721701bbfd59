"""``NativeClient``: the proxy's own HTTP/1.1 upstream client on asyncio protocols and llhttp.

It implements ``proxy/upstream.UpstreamClient`` with one keep-alive pool per instance address
(``native_pool``) of ``native_conn.Conn`` protocols, and adds nothing to the request but
``Transfer-Encoding: chunked`` when a body of unknown length is sent. Per request it allocates
the head bytes, one future per awaited event (with its timer) and the response handle; no task.

Request bodies are pulled from the iterator only after the head was written, one chunk at a
time, and never faster than the socket drains (``pause_writing``). So ``request_sent=False``
always means the iterator was not touched, and a caller may send the same iterator elsewhere.
If the final response head arrives before the body is fully sent (a 413, say), sending stops,
the response is returned and the connection is closed after it.

Stale keep-alive connections. A server may close an idle connection just as a request is being
written to it (its keep-alive timeout). The request is then sent once more, transparently, on a
fresh connection when all of these hold:

1. the connection was reused from the pool (a failing new connection is reported as is);
2. the server closed or reset it before any byte of a response arrived (no timeout, no garbage);
3. either no request byte had been written (any method), or the method is idempotent
   (RFC 9110 9.2.2: GET HEAD OPTIONS TRACE PUT DELETE) and every body byte consumed so far is
   still held: no body, or at most ``REPLAY_LIMIT`` bytes pulled from the iterator (they are kept
   until the response head arrives, and replayed before pulling more).

Anything else fails the request (``request_sent`` True if any byte of any attempt was written),
and the proxy's retry policy decides. A non-idempotent request (POST, PATCH) is never resent once
a byte of it went out: the server may have acted on it before closing, as Go's ``net/http``,
aiohttp and nginx also assume. Errors carry fixed details, never the instance address.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Iterable

from msa_gateway.errors import UpstreamError, UpstreamTimeout
from msa_gateway.model import Instance, ServiceOptions
from msa_gateway.proxy.native_conn import (
    ABORTED,
    LAST_CHUNK,
    LOST,
    Conn,
    Failure,
    Headers,
    InvalidHead,
    frame_chunk,
    serialize_head,
)
from msa_gateway.proxy.native_pool import IDLE_TIMEOUT, Overflow, Pool
from msa_gateway.tasks import Supervised, Supervisor
from msa_gateway.write_batch import DIRECT, WriteBatch

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
REPLAY_LIMIT = 64 * 1024
SWEEP_INTERVAL = 1.0


def to_error(failure: Failure, request_sent: bool) -> UpstreamError:
    """Return the gateway error for ``failure`` (a reset with nothing written is ``reset_before_send``)."""
    if failure.timeout:
        return UpstreamTimeout(failure.detail, failure.kind, request_sent=request_sent)
    kind = failure.kind
    if kind == "reset" and not request_sent:
        kind = "reset_before_send"
    return UpstreamError(failure.detail, kind, request_sent=request_sent)


class _Body:
    """The request body across attempts: the iterator plus the consumed chunks still held."""

    __slots__ = ("held", "held_bytes", "it", "length")

    def __init__(self, it: AsyncIterator[bytes], length: int | None, replayable: bool) -> None:
        self.it = it
        self.length = length
        self.held: list[bytes] | None = [] if replayable else None
        self.held_bytes = 0


class _Response:
    """The response handle given to the proxy; detached from the connection once released."""

    __slots__ = ("_conn", "_eof", "_pool", "headers", "status")

    def __init__(self, conn: Conn, pool: Pool) -> None:
        self._conn: Conn | None = conn
        self._pool = pool
        self._eof = False
        self.status = conn.status
        self.headers: list[tuple[bytes, bytes]] = conn.headers

    async def read(self) -> bytes:
        """Return the body bytes that arrived since the last call (waiting for some); ``b""`` at the end."""
        conn = self._conn
        if conn is None:
            if self._eof:
                return b""
            raise to_error(ABORTED, True)
        while True:
            if conn.chunks:
                return conn.take()
            if conn.done:
                return b""
            failure = conn.failure
            if failure is not None:
                raise to_error(failure, True)
            await conn.wait()

    def at_eof(self) -> bool:
        """Return whether the whole body has been read."""
        conn = self._conn
        if conn is None:
            return self._eof
        return conn.done and not conn.chunks

    def buffered(self) -> int:
        """Return how many body bytes arrived and wait unread."""
        conn = self._conn
        return conn.buffered if conn is not None else 0

    def release(self) -> None:
        """Pool the connection if the response ended cleanly and both sides keep it alive, else close it."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        self._eof = conn.done and not conn.chunks
        if conn.reusable():
            self._pool.give_back(conn)
        else:
            self._pool.discard(conn)

    def close(self) -> None:
        """Abort the connection; a pending ``read`` fails."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        conn.fail(ABORTED)
        self._pool.discard(conn)


class NativeClient:
    """Upstream client on asyncio protocols, llhttp parsing and per-instance keep-alive pools."""

    name = "native"

    @classmethod
    def create(cls, tasks: Supervisor | None, writes: WriteBatch = DIRECT) -> NativeClient:
        """Return a new client whose idle sweeper runs on ``tasks`` and whose writes go through ``writes``."""
        return cls(tasks=tasks, writes=writes)

    def __init__(
        self,
        idle_timeout: float = IDLE_TIMEOUT,
        sweep_interval: float = SWEEP_INTERVAL,
        *,
        tasks: Supervisor | None = None,
        writes: WriteBatch = DIRECT,
    ) -> None:
        self._pools: dict[str, Pool] = {}
        self._retired: set[Pool] = set()
        self._idle_timeout = idle_timeout
        self._sweep_interval = sweep_interval
        self._tasks = tasks or Supervisor()
        self._sweeper: Supervised | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writes = writes

    async def send(  # noqa: PLR0913, PLR0912 - the UpstreamClient seam: the parts of one HTTP request, no per-attempt object; the exchange's states in one readable sequence; hot path
        self,
        instance: Instance,
        options: ServiceOptions,
        method: str,
        target: str,
        headers: Headers,
        body: bytes | AsyncIterator[bytes] | None,
        content_length: int | None,
    ) -> _Response:
        """Send the head, stream ``body`` (chunked without ``content_length``); return the response head.

        A body given as bytes (already read whole) goes out in the same write as the head.
        """
        pool = self._pools.get(instance.address)
        if pool is None:
            pool = self._new_pool(instance)
        try:
            head = serialize_head(method, target, headers, body is not None and content_length is None)
        except InvalidHead:
            raise UpstreamError(
                "the request cannot be forwarded as HTTP/1.1", "protocol_error", request_sent=False
            ) from None
        timeouts = options.timeouts
        conn = pool.take_idle()  # the common case, without a coroutine for it
        reused = conn is not None
        if conn is None:
            conn, reused = await self._acquire(pool, options.max_connections_per_instance, timeouts.connect)
        idempotent = method in IDEMPOTENT_METHODS
        if isinstance(body, bytes):
            head += body if content_length is not None else (frame_chunk(body) if body else b"") + LAST_CHUNK
            body = None
        state = None if body is None else _Body(body, content_length, idempotent)
        is_head = method == "HEAD"
        sent = False
        try:
            while True:
                conn.start(is_head, timeouts.read)
                if conn.closed or conn.transport.is_closing():
                    conn.failure = LOST
                else:
                    conn.write(head)
                    if state is not None:
                        await _send_body(conn, state)
                    while not conn.head_done and conn.failure is None:
                        await conn.wait()
                sent = sent or conn.written
                if conn.head_done:
                    if state is not None:
                        state.held = None
                    return _Response(conn, pool)
                failure = conn.failure or LOST
                if not (
                    reused
                    and failure is LOST
                    and (not conn.written or (idempotent and (state is None or state.held is not None)))
                ):
                    raise to_error(failure, sent)
                # A stale keep-alive connection: once more on a fresh one, under the same slot.
                pool.detach(conn)
                reused = False
                try:
                    conn = await self._connect(pool, timeouts.connect)
                except UpstreamError:
                    if sent:
                        raise to_error(failure, sent) from None
                    raise
        except BaseException:
            pool.discard(conn)
            raise

    def retain(self, addresses: set[str]) -> None:
        """Close idle connections to instances not in ``addresses``; busy ones close when released."""
        self.release([a for a in self._pools if a not in addresses])

    def release(self, addresses: Iterable[str]) -> None:
        """Close idle connections to ``addresses``; busy ones close when released."""
        for address in addresses:
            pool = self._pools.pop(address, None)
            if pool is None:
                continue
            pool.retired = True
            pool.close_idle()
            if pool.conns:
                self._retired.add(pool)

    async def aclose(self) -> None:
        """Stop the idle sweeper and abort every connection."""
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            await sweeper.stop()
        for pool in [*self._pools.values(), *self._retired]:
            pool.close_all()
        self._pools.clear()
        self._retired.clear()
        await asyncio.sleep(0)  # let the transports run connection_lost

    def idle_count(self, address: str) -> int:
        """Return how many idle connections to ``address`` are pooled."""
        pool = self._pools.get(address)
        return len(pool.idle) if pool is not None else 0

    def open_count(self, address: str) -> int:
        """Return how many connections to ``address`` are open or opening, idle or busy."""
        pool = self._pools.get(address)
        return pool.size if pool is not None else 0

    # --- internals ---------------------------------------------------------------------------

    def _new_pool(self, instance: Instance) -> Pool:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        if self._sweeper is None:
            self._sweeper = self._tasks.spawn("upstream_idle_sweeper", self._sweep)
        pool = self._pools[instance.address] = Pool(loop, instance.host, instance.port)
        return pool

    async def _acquire(self, pool: Pool, limit: int, timeout: float) -> tuple[Conn, bool]:
        """With no idle connection (``send`` took that one): a new one, else wait for one handed back.

        ``reused`` is True for a handed-back connection.
        """
        if not pool.reserve(limit):
            try:
                handed = await pool.wait(timeout)
            except Overflow:
                raise UpstreamError(
                    "too many requests to the service are in flight", "overflow", request_sent=False
                ) from None
            if handed is not None:
                if not handed.closed:
                    return handed, True
                pool.detach(handed)  # it died on the way: its slot is ours
        return await self._connect(pool, timeout), False

    async def _connect(self, pool: Pool, timeout: float) -> Conn:
        """Open a connection under a slot already reserved (freed again on failure)."""
        loop = pool.loop
        conn = Conn(loop, pool, self._writes)
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(lambda: conn, pool.host, pool.port)
        except BaseException as exc:
            pool.free_slot()
            conn.abort()
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(
                    "the service did not accept a connection in time", "connect_timeout", request_sent=False
                ) from None
            if isinstance(exc, ConnectionRefusedError) or (
                isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED
            ):
                raise UpstreamError(
                    "the service refused the connection", "connect_refused", request_sent=False
                ) from None
            if isinstance(exc, OSError):
                raise UpstreamError(
                    "the service could not be reached", "connect_error", request_sent=False
                ) from None
            raise
        pool.added(conn)
        return conn

    async def _sweep(self) -> None:
        """Close idle connections past the keep-alive timeout; forget retired pools once empty."""
        assert self._loop is not None
        while True:
            await asyncio.sleep(self._sweep_interval)
            cutoff = self._loop.time() - self._idle_timeout
            for pool in self._pools.values():
                pool.expire(cutoff)
            if self._retired:
                self._retired = {pool for pool in self._retired if pool.conns}


async def _send_body(conn: Conn, state: _Body) -> None:  # noqa: PLR0912 - the exchange's states in one readable sequence; hot path
    """Write the held chunks again, then the rest of the iterator, framed; stop on an early answer."""
    length = state.length
    sent = 0
    held = state.held
    replay = list(held) if held else ()
    it = state.it
    index = 0
    while True:
        if index < len(replay):
            chunk = replay[index]
            index += 1
        else:
            try:
                chunk = await it.__anext__()
            except StopAsyncIteration:
                break
            except Exception:
                conn.abort()
                raise UpstreamError(
                    "the request body could not be read", "reset", request_sent=True
                ) from None
            if not chunk:
                continue
            if held is not None:
                state.held_bytes += len(chunk)
                if state.held_bytes <= REPLAY_LIMIT:
                    held.append(chunk)
                else:
                    held = state.held = None
        if conn.closed or conn.failure is not None or conn.head_done:
            if conn.head_done:
                conn.keep = False  # answered early: the rest of the body is not sent
            return
        if length is None:
            conn.write(frame_chunk(chunk))
        else:
            sent += len(chunk)
            if sent > length:
                conn.abort()
                raise UpstreamError(
                    "the request body is longer than its Content-Length", "protocol_error", request_sent=True
                )
            conn.write(chunk)
        while conn.paused_writing and not conn.closed and conn.failure is None and not conn.head_done:
            await conn.wait()
    if conn.closed or conn.failure is not None:
        return
    if length is None:
        conn.write(LAST_CHUNK)
    elif sent != length:
        conn.abort()
        raise UpstreamError(
            "the request body is shorter than its Content-Length", "protocol_error", request_sent=True
        )
