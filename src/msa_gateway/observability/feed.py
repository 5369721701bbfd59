"""The live dashboard's event stream: one producer per process, any number of subscribers.

Once per tick (a second) the producer task reads the runtime (services, instances with health,
ejection and in-flight, discovery, config) and the rates since the previous tick
(``live.RateWindow``), serialises that once into a server-sent event and wakes every
subscriber, which writes the same bytes to its connection. Twenty open dashboards therefore
cost one snapshot a second plus twenty socket writes; the request path is not involved.

The producer is a supervised background task (``dashboard_feed``) started with the first
subscriber; while nobody subscribes it waits without ticking, and the next subscriber starts
a fresh baseline (its first event has no rates yet, the next ones do). While the gateway drains,
the producer ends every stream so shutdown does not wait for open dashboards.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import orjson

from msa_gateway.observability.live import IDLE, RateWindow, ServiceRates
from msa_gateway.tasks import Supervised

if TYPE_CHECKING:
    from msa_gateway.registry.snapshot import ServiceRoute
    from msa_gateway.runtime import Runtime

TICK_SECONDS = 1.0
# What each array in a service's ``instances`` holds (``ejected_for``: seconds left, None when not ejected).
INSTANCE_FIELDS = ("id", "address", "health", "ejected_for", "in_flight")
RETRY_MS = 2000  # how soon a browser's EventSource reconnects after the stream ends


def sse(data: bytes, event_id: int) -> bytes:
    """Return one server-sent event carrying ``data`` (one line of JSON) with its id."""
    return b"id: %d\ndata: %s\n\n" % (event_id, data)


class LiveFeed:
    """Snapshots of the runtime plus per-second rates, published to every open dashboard."""

    def __init__(self, runtime: Runtime, interval: float = TICK_SECONDS) -> None:
        self._rt = runtime
        self.interval = interval
        self._rates = RateWindow(runtime.metrics.requests)
        self.subscribers = 0
        self.seq = 0
        self.latest: bytes | None = None  # the current event, None while idle
        self.closed = False
        self._tick = asyncio.Event()  # replaced at every publish; the old one is set
        self._wanted = asyncio.Event()
        self._task: Supervised | None = None

    # --- subscribers -------------------------------------------------------------------

    async def events(self, stopped: asyncio.Event | None = None) -> AsyncGenerator[bytes, None]:
        """Yield the stream of one subscriber: the current event (if any), then one per tick.

        The stream ends when the feed closes, or when ``stopped`` is set and ``wake`` called (the
        client went away).
        """
        if self._task is None or self._task.done():
            self._task = self._rt.spawn("dashboard_feed", self.run)
        self.subscribers += 1
        self._wanted.set()
        seen = 0
        try:
            yield b"retry: %d\n\n" % RETRY_MS
            while not self.closed and not (stopped is not None and stopped.is_set()):
                if self.seq == seen or self.latest is None:
                    await self._tick.wait()
                    continue
                seen = self.seq
                yield self.latest
        finally:
            self.subscribers -= 1

    def close(self) -> None:
        """End every stream (the gateway is shutting down); later subscribers end at once."""
        self.closed = True
        self.wake()

    def wake(self) -> None:
        """Wake every subscriber now (each goes back to waiting unless it has something to do)."""
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    # --- producer ----------------------------------------------------------------------

    async def run(self) -> None:
        """Tick while anyone subscribes; wait without ticking otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while not self.closed:
            if self.subscribers <= 0:
                self.latest = None
                self._rates.reset()
                self._wanted.clear()
                await self._wanted.wait()
                deadline = loop.time()
            if self._rt.draining:
                self.close()
                return
            self.publish()
            deadline += self.interval
            now = loop.time()
            if deadline < now:  # the loop was busy for more than a tick: start again from now
                deadline = now + self.interval
            await asyncio.sleep(deadline - now)

    def publish(self) -> bytes:
        """Build the current event, make it the latest and wake every subscriber; return it."""
        self.seq += 1
        self.latest = sse(orjson.dumps(self.state(time.time())), self.seq)
        self.wake()
        return self.latest

    def state(self, now: float) -> dict[str, Any]:
        """Return what one event carries: the gateway, discovery, config and every service."""
        rt = self._rt
        rates = self._rates.tick(time.monotonic())
        agg = rt.aggregator
        config = rt.config
        return {
            "time": now,
            "interval": self.interval,
            "instance_fields": INSTANCE_FIELDS,
            "gateway": {
                "version": rt.version,
                "uptime_seconds": round(now - rt.started_at, 1),
                "ready": rt.ready,
                "worker": rt.worker,
                "in_flight": rt.metrics.requests.in_flight,
            },
            "discovery": {
                "provider": rt.provider.name,
                "up": agg.up,
                "last_success": agg.last_success,
                "last_error": None if agg.up else agg.last_error,
                "registry_version": rt.snapshot.version,
                "recovering": agg.recovery is not None,
            },
            "config": {
                "source": config.source,
                "hash": config.digest,
                "loaded_at": rt.reloader.loaded_at,
                "last_error": rt.reloader.last_error,
            },
            "services": [
                _service(route, None if rates is None else rates.get(name, IDLE), rt)
                for name, route in sorted(rt.snapshot.services.items())
            ],
        }


def _service(route: ServiceRoute, rates: ServiceRates | None, rt: Runtime) -> dict[str, Any]:
    """Return one service's row: its rates and its instances' health, ejection and load."""
    guard = route.guard
    health, in_flight = rt.health.get, guard.limits.in_flight
    now = time.monotonic()
    # The full outlier snapshot (one object per instance) only when something is ejected: the common
    # case is a set lookup, which keeps a tick cheap on a registry of thousands of instances.
    ejected = guard.outlier.ejected_keys(now)
    remaining = (
        {k: s.remaining for k, s in guard.outlier.snapshot(now).items() if s.ejected} if ejected else {}
    )
    # One array per instance, in INSTANCE_FIELDS order: with thousands of instances the event is
    # what every dashboard receives each second, and objects would repeat every key per instance.
    instances = [
        [
            inst.id,
            inst.address,
            health(key).status,
            round(remaining[key], 1) if key in remaining else None,
            in_flight(key),
        ]
        for inst, key in zip(route.instances, route.keys, strict=True)
    ]
    return {
        "name": route.name,
        "healthy": len(route.eligible),
        "total": len(route.instances),
        "panic": guard.in_panic,
        "in_flight": guard.limits.requests,
        "rates": None if rates is None else rates.as_dict(),
        "instances": instances,
    }
