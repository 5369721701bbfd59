"""State that policy stages share across snapshots: one keyed store, owned by the Runtime.

Stages are rebuilt whenever a snapshot is (a discovery change, a config reload), but some of
what they hold must outlive them: a JWKS cache (else every swap would refetch the identity
provider's keys) or a cache of verified tokens. A factory asks ``SharedState.get(key, make)``
for such an object; the same key gives the same object for as long as the runtime lives, so
two services with the same ``jwks_url`` share one cache and one fetch.

The store is bounded (the oldest entry goes first) so that a config reloaded many times with
changing settings cannot grow it without limit; an evicted object stays alive in the stages
that still hold it. The Runtime passes its store to every ``ServiceSpec`` it builds; a spec
built without one (a unit test) gets a private store from ``SharedState.of``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, TypeVar

from msa_gateway.tasks import Supervisor

if TYPE_CHECKING:
    from msa_gateway.model import ServiceSpec
    from msa_gateway.observability.metrics import Metrics
    from msa_gateway.settings import Settings

T = TypeVar("T")
MAX_SHARED = 256


class SharedState:
    """A bounded, keyed store of long-lived policy objects, plus the clocks and tasks they use."""

    def __init__(
        self,
        tasks: Supervisor | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        limit: int = MAX_SHARED,
        settings: Settings | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.tasks = tasks or Supervisor()
        self.settings = settings  # for policies that connect somewhere (rate_limit's Redis)
        self.metrics = metrics  # None in unit tests: nothing is counted
        self.monotonic = monotonic  # for intervals, TTLs and backoff
        self.wall = wall  # for token expiry (``exp`` is Unix time)
        self.limit = limit
        self._objects: dict[Hashable, Any] = {}

    @staticmethod
    def of(spec: ServiceSpec) -> SharedState:
        """Return the runtime's store the spec carries, or a private one."""
        return spec.shared if spec.shared is not None else SharedState()

    def get(self, key: Hashable, make: Callable[[], T], kind: type[T]) -> T:
        """Return the object stored under ``key``, made by ``make()`` the first time."""
        found = self._objects.get(key)
        if isinstance(found, kind):
            return found
        while len(self._objects) >= self.limit:
            del self._objects[next(iter(self._objects))]
        made = self._objects[key] = make()
        return made

    def __len__(self) -> int:
        return len(self._objects)

    async def aclose(self) -> None:
        """Close the stored objects that hold connections (those with an ``aclose``)."""
        for obj in list(self._objects.values()):
            close = getattr(obj, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
