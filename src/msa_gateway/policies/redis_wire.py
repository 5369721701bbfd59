"""A pipelined RESP connection for rate-limit decisions, by hand where redis-py was the cost.

Through redis-py a decision cost about 38 µs of gateway CPU (a pipeline object, the pool's lock,
a task, a timer and ``asyncio.wait`` per batch): 64 callers in one process got 25,800 decisions/s.
Here a decision is one command packed by hiredis (C), appended to its event-loop turn's batch; a
turn's commands leave in one ``transport.write`` and hiredis parses the replies, which are handed
out in order. About 3 µs a decision; Redis running the script becomes the limit (87,000/s on the
same machine, the client using a quarter of a core).

One connection is enough: Redis runs one connection's commands in the order they arrive and
answers in that order, so pipelining loses nothing. Not supported, as the backend needs none of
it: pub/sub, transactions, RESP3, Cluster redirects (the keys of one decision share a hash tag;
a ``MOVED`` answer is an error like any other). Maintenance (tests, ``SCRIPT FLUSH``) goes through
redis-py, whose settings (``REDIS_URL``, TLS, a Unix socket, user, password, db) ``Endpoint``
reads, so both always reach the same server.

Deadlines cost no timer per command: a ``Wire`` notes when each command was sent and keeps one
timer, for the oldest. When it fires the loop gets ``GRACE_TURNS`` turns to read an answer that
came while it was busy; a timer that fired more than half a timeout late means the loop was
starved of CPU, not that Redis was slow, and that command gets one more timeout. A command still
unanswered then fails the connection: every command waiting on it gets the error as its reply
(``Reply``: an exception instance, never raised, as hiredis hands out error replies).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any, cast

import hiredis
from redis.asyncio import Redis, SSLConnection, UnixDomainSocketConnection

GRACE_TURNS = 3  # event-loop turns a late command gets to read an answer already in the socket
_EARLY = 0.001  # a timer may fire this much before its deadline

Reply = Any  # bytes | int | list | None, or an exception instance (an error reply, a failed connection)


def pack(*parts: str | int | float | bytes) -> bytes:
    """Return one command in RESP, packed by hiredis."""
    packed: bytes = hiredis.pack_command(parts)  # type: ignore[arg-type]  # its stub: a 1-tuple
    return packed


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect, as the redis-py client was configured."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # a Unix socket
    ssl: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0

    @classmethod
    def of(cls, client: Redis) -> Endpoint:
        """Return the endpoint of ``client``'s pool (read from one connection it makes, unconnected)."""
        kwargs = client.connection_pool.connection_kwargs
        conn = client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        return cls(
            host=str(kwargs.get("host", "localhost")),
            port=int(kwargs.get("port", 6379)),
            path=str(kwargs["path"]) if isinstance(conn, UnixDomainSocketConnection) else None,
            ssl=conn.ssl_context.get() if isinstance(conn, SSLConnection) else None,
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            db=int(kwargs.get("db") or 0),
        )

    def handshake(self) -> list[bytes]:
        """Return the commands that open a connection: AUTH and SELECT when configured."""
        commands = []
        if self.password is not None:
            user = () if self.username is None else (self.username,)
            commands.append(pack("AUTH", *user, self.password))
        if self.db:
            commands.append(pack("SELECT", self.db))
        return commands


class Wire(asyncio.Protocol):
    """One pipelined connection: ``send`` returns a future of the command's reply."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.waiting: deque[tuple[asyncio.Future[Reply], float]] = deque()  # (reply, when sent)
        self.out: list[bytes] = []  # this turn's commands, written together
        self.failed: BaseException | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._extended = (-1.0, 0.0)  # (send time, deadline) of a command given a second timeout

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        """Hand each complete reply to the oldest command waiting."""
        reader = self.reader
        reader.feed(data)
        waiting = self.waiting
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(exc)
                return
            if reply is False:
                return
            if not waiting:  # a reply nobody asked for: the stream is out of step
                self.fail(ConnectionError("an unexpected reply from Redis"))
                return
            future = waiting.popleft()[0]
            if not future.done():
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(exc or ConnectionError("Redis closed the connection"))

    # --- commands -------------------------------------------------------------------------

    def send(self, packed: bytes) -> asyncio.Future[Reply]:
        """Queue one packed command; the future's result is its reply (an exception instance on failure)."""
        future: asyncio.Future[Reply] = self.loop.create_future()
        if self.failed is not None:
            future.set_result(self.failed)
            return future
        out = self.out
        if not out:
            self.loop.call_soon(self._flush)
        out.append(packed)
        now = self.loop.time()
        self.waiting.append((future, now))
        if self._timer is None:
            self._timer = self.loop.call_at(now + self.timeout, self._expire)
        return future

    def _flush(self) -> None:
        out, self.out = self.out, []
        if self.failed is None and self.transport is not None:
            self.transport.write(b"".join(out))

    def fail(self, exc: BaseException) -> None:
        """Close the connection; every command waiting gets ``exc`` as its reply."""
        if self.failed is not None:
            return
        self.failed = exc
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.abort()
        waiting, self.waiting = self.waiting, deque()
        for future, _ in waiting:
            if not future.done():
                future.set_result(exc)

    # --- deadlines ------------------------------------------------------------------------

    def _due(self, sent: float) -> float:
        extended_sent, extended_due = self._extended
        return extended_due if sent == extended_sent else sent + self.timeout

    def _arm(self) -> None:
        if self._timer is None and self.waiting and self.failed is None:
            self._timer = self.loop.call_at(self._due(self.waiting[0][1]), self._expire)

    def _expire(self) -> None:
        """The oldest command's deadline (or an earlier one's, since answered) has come."""
        self._timer = None
        if not self.waiting or self.failed is not None:
            return
        future, sent = self.waiting[0]
        due = self._due(sent)
        now = self.loop.time()
        if now < due - _EARLY:
            self._arm()
        elif sent != self._extended[0] and now - due > self.timeout / 2:
            self._extended = (sent, now + self.timeout)  # the loop was starved: one more timeout
            self._arm()
        else:
            self.loop.call_soon(self._grace, GRACE_TURNS, future)

    def _grace(self, turns: int, future: asyncio.Future[Reply]) -> None:
        """Give the loop ``turns`` more turns to read the answer to ``future``; then fail."""
        if self.failed is not None:
            return
        if not self.waiting or self.waiting[0][0] is not future:
            self._arm()  # answered meanwhile: watch the next one
        elif turns:
            self.loop.call_soon(self._grace, turns - 1, future)
        else:
            self.fail(TimeoutError(f"no answer from Redis within {self.timeout:g} s"))


async def open_wire(endpoint: Endpoint, timeout: float, *then: bytes) -> Wire:
    """Connect, run the handshake and the commands ``then``; raise on a failure or an error reply."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        if endpoint.path is not None:
            _, wire = await loop.create_unix_connection(lambda: Wire(timeout), endpoint.path)
        else:
            _, wire = await loop.create_connection(
                lambda: Wire(timeout), endpoint.host, endpoint.port, ssl=endpoint.ssl
            )
    for reply in await asyncio.gather(*(wire.send(c) for c in (*endpoint.handshake(), *then))):
        if isinstance(reply, BaseException):
            wire.fail(reply)
            raise reply
    return wire
