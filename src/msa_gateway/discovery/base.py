"""The provider seam: one small protocol every registry backend implements.

A provider watches its registry in the background and yields *complete* snapshots (every
service with all its instances), never diffs. It raises ``DiscoveryError`` (or lets any
exception escape) when the registry cannot be read; the aggregator then keeps the last good
snapshot, reports the provider down and restarts ``watch()`` with capped backoff and jitter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from msa_gateway.model import Discovered, Instance

if TYPE_CHECKING:
    from msa_gateway.settings import GatewayConfig, Settings
    from msa_gateway.tasks import Supervisor


@runtime_checkable
class Provider(Protocol):
    """A source of service instances."""

    name: str

    def watch(self) -> AsyncIterator[Discovered]:
        """Yield a complete snapshot now and again after every change; run until cancelled."""
        ...

    async def aclose(self) -> None:
        """Release clients and connections."""
        ...


@runtime_checkable
class Registrar(Protocol):
    """Writes instances into a registry (Redis, etcd); used by the CLI, the helper and admin endpoints."""

    async def register(self, service: str, instance: Instance, ttl: float) -> None:
        """Add or refresh ``instance`` of ``service``; it expires ``ttl`` seconds after its last heartbeat."""
        ...

    async def heartbeat(self, service: str, instance_id: str, ttl: float) -> bool:
        """Extend the instance's lifetime; return False when it is no longer registered."""
        ...

    async def deregister(self, service: str, instance_id: str) -> bool:
        """Remove the instance; return False when it was not registered."""
        ...

    async def aclose(self) -> None:
        """Release clients and connections."""
        ...


class ProviderClass(Protocol):
    """What the provider table holds: a class that builds its provider from the settings."""

    def from_settings(
        self, settings: Settings, config: GatewayConfig, tasks: Supervisor | None = None
    ) -> Provider:
        """Build the provider; its background tasks start on ``tasks``."""
        ...


class RegistrarClass(Protocol):
    """What the registrar table holds: a class that connects its registrar from the settings."""

    def from_settings(self, settings: Settings) -> Registrar:
        """Connect to the registry the settings name."""
        ...
