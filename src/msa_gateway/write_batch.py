"""Socket writes of one event-loop turn, sent together at its end while requests run side by side.

Why: a write to a peer that sleeps in ``epoll_wait`` (the instance, the client) wakes it, and
waking a process on another CPU is an inter-processor interrupt; on a VM it is a hypervisor exit,
charged to the writer's system time. At 64 connections the loop runs a few dozen requests per
turn, each some 20 µs of Python between its writes: long enough for the peer to finish the last
one and sleep again, so nearly every write woke it. ``perf`` put a sixth of the gateway's CPU in
that wake-up (``tcp_sendmsg`` -> ``sock_def_readable`` -> ``try_to_wake_up``). Written together
at the end of the turn, the first write wakes the peer and the others find it awake. Netty's
``FlushConsolidationHandler`` does the same for the same reason.

Only while at least ``SHARED_FROM`` requests are in flight. Alone (one connection, the latency
case) a request's write would only wait for nothing, and the peer, which could have started on it
while the gateway finished its turn, would start later; with two, the other one is mostly waiting
for its instance, so a turn rarely has a second write to share the wake-up with (measured at 2, 4,
8 and 64 connections: holding at two in flight cost 3% at 2 connections, at three it is even at
8 and 18% less CPU at 64).

Order. Each transport's bytes keep their order within the batch. A write that bypasses it on a
transport with bytes still held (the server's own answers, a close) must ``flush`` first;
nothing else can reach such a transport before the flush runs: the next request on a connection
starts after its previous response completed, so its task is scheduled after the flush is.
A transport closed in the meantime gets nothing (its request failed or the client went away).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

log = logging.getLogger("msa_gateway.server")

SHARED_FROM = 3  # requests in flight from which writes are held to the end of the turn


class Load(Protocol):
    """How many requests are being served now (``RequestStats``)."""

    in_flight: int


class WriteBatch:
    """Writes held until the loop has run the current turn's callbacks, then sent in order.

    One per event loop (the runtime's). Without ``load`` every write goes out at once.
    """

    __slots__ = ("_load", "_loop", "_pending")

    def __init__(self, load: Load | None = None) -> None:
        self._load = load
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[Any] = []  # transport, data, transport, data, ...

    def write(self, transport: Any, data: bytes) -> None:
        """Write ``data`` at the end of this turn when ``SHARED_FROM`` requests are in flight, else now."""
        load = self._load
        if load is None or load.in_flight < SHARED_FROM:
            transport.write(data)
            return
        pending = self._pending
        if not pending:  # the turn's first: its flush runs after the callbacks already due
            loop = self._loop
            if loop is None or loop.is_closed():  # looked up once (a lookup is a system call on 3.11)
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self.flush)
        pending.append(transport)
        pending.append(data)

    def flush(self) -> None:
        """Send what is held, in order; a transport closing meanwhile gets nothing."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        items = iter(pending)
        for transport in items:
            data = next(items)
            if transport.is_closing():
                continue
            try:
                transport.write(data)
            except Exception:  # one broken transport must not hold back the others' bytes
                log.exception("held_write_failed")

    @property
    def held(self) -> int:
        """Return how many writes wait for the end of the turn."""
        return len(self._pending) // 2


DIRECT = WriteBatch()  # writes at once: for clients and servers outside a runtime
