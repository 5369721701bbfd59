"""Keep-alive connections to one instance, bounded, with a fair wait when all are busy.

``size`` counts every connection of the pool that is open or being opened, idle or busy; it
never exceeds the bound the caller passes to ``acquire``. A request that finds no idle
connection and no free slot waits (first come, first served) for one to come back; a connection
given back goes straight to the oldest waiter, and a slot freed by a closed connection is handed
on the same way, so nobody can overtake a waiter. Idle connections are kept last-in, first-out
(the warmest is reused first, the coldest expire) and closed after ``IDLE_TIMEOUT`` seconds by
``expire``, which the client calls from its one sweeper task.
"""

from __future__ import annotations

import asyncio
from collections import deque

from msa_gateway.proxy.native_conn import ABORTED, Conn

IDLE_TIMEOUT = 15.0


class Overflow(Exception):
    """No connection came free within the wait."""


class Pool:
    """The connections to one instance address."""

    __slots__ = ("conns", "host", "idle", "loop", "port", "retired", "size", "waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.idle: deque[Conn] = deque()
        self.conns: set[Conn] = set()
        self.size = 0
        self.waiters: deque[asyncio.Future[Conn | None]] = deque()
        self.retired = False

    def take_idle(self) -> Conn | None:
        """Return the most recently used idle connection, now busy, or None."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.busy = True
                return conn
            self._forget(conn)
        return None

    def reserve(self, limit: int) -> bool:
        """Take a slot for a new connection if the pool holds fewer than ``limit``."""
        if self.size < limit and not self.waiters:
            self.size += 1
            return True
        return False

    async def wait(self, timeout: float) -> Conn | None:
        """Wait for a connection given back (returned busy) or a slot (None); raise ``Overflow``."""
        loop = self.loop
        fut: asyncio.Future[Conn | None] = loop.create_future()
        self.waiters.append(fut)
        timer = loop.call_later(timeout, _expire_waiter, fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                handed = fut.result()  # handed over just before the cancellation: pass it on
                if handed is None:
                    self.free_slot()
                else:
                    self.give_back(handed)
            raise
        finally:
            timer.cancel()
            if fut in self.waiters:
                self.waiters.remove(fut)

    def added(self, conn: Conn) -> None:
        """Track a connection opened under a reserved slot."""
        self.conns.add(conn)

    def give_back(self, conn: Conn) -> None:
        """Take back a busy connection after a complete exchange: to a waiter, else idle."""
        if conn.closed or self.retired:
            self.discard(conn)
            return
        if conn.paused_reading:
            conn.paused_reading = False
            conn.transport.resume_reading()  # notice the server closing it while idle
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.busy = False
        conn.idle_since = self.loop.time()
        self.idle.append(conn)

    def discard(self, conn: Conn) -> None:
        """Close a busy connection that must not be reused and free its slot."""
        conn.busy = False
        conn.abort()
        if conn in self.conns:
            self.conns.discard(conn)
            self.free_slot()

    def detach(self, conn: Conn) -> None:
        """Close ``conn`` but keep its slot for a replacement the caller opens right away."""
        conn.busy = False
        conn.abort()
        self.conns.discard(conn)

    def free_slot(self) -> None:
        """Hand a freed slot to the oldest waiter, else shrink."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.size -= 1

    def lost_idle(self, conn: Conn) -> None:
        """Forget an idle connection the server closed."""
        if conn in self.idle:
            self.idle.remove(conn)
        self._forget(conn)

    def expire(self, cutoff: float) -> None:
        """Close the connections idle since ``cutoff`` (loop time) or earlier."""
        idle = self.idle
        while idle and idle[0].idle_since <= cutoff:
            conn = idle.popleft()
            conn.abort()
            self._forget(conn)

    def close_idle(self) -> None:
        """Close every idle connection."""
        while self.idle:
            conn = self.idle.popleft()
            conn.abort()
            self._forget(conn)

    def close_all(self) -> None:
        """Abort every connection and wake the waiters (they fail with ``Overflow``)."""
        self.retired = True
        self.close_idle()
        for conn in list(self.conns):
            conn.fail(ABORTED)
        self.conns.clear()
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(Overflow())

    def _forget(self, conn: Conn) -> None:
        if conn in self.conns:
            self.conns.discard(conn)
            self.free_slot()


def _expire_waiter(fut: asyncio.Future[Conn | None]) -> None:
    if not fut.done():
        fut.set_exception(Overflow())
