"""The static provider: the services and instances of the YAML file, emitted once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Self

from msa_gateway.model import Discovered
from msa_gateway.settings import GatewayConfig, Settings
from msa_gateway.tasks import Supervisor


class StaticProvider:
    """Emit the YAML file's instances, then wait (a reloaded file comes through ``reconfigure``)."""

    name = "static"

    def __init__(self, config: GatewayConfig) -> None:
        self._config = config

    @classmethod
    def from_settings(
        cls, settings: Settings, config: GatewayConfig, tasks: Supervisor | None = None
    ) -> Self:
        """Build the provider from the loaded config (it starts no background task)."""
        del tasks
        return cls(config)

    def reconfigure(self, config: GatewayConfig) -> None:
        """Take a reloaded file's instances (the runtime applies them; a restarted watch yields them)."""
        self._config = config

    def services(self) -> Discovered:
        """Return the file's services and their instances."""
        return {name: svc.instances for name, svc in self._config.services.items()}

    async def watch(self) -> AsyncIterator[Discovered]:
        """Yield the configured services once and then wait until cancelled."""
        yield self.services()
        await asyncio.Event().wait()

    async def aclose(self) -> None:
        """Nothing to release."""
