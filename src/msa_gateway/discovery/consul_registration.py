"""Self-registration with the local Consul agent, for services the gateway routes to.

    async with ConsulRegistration("orders", 8001, check=HttpCheck("http://10.0.0.5:8001/health")):
        await serve()

registers the instance through the agent's "Register Service" endpoint
(``PUT /v1/agent/service/register``) with an HTTP check run by the agent, or a TTL check that a
named background task keeps passing (``PUT /v1/agent/check/pass/:check_id``), and deregisters it
(``PUT /v1/agent/service/deregister/:service_id``) when the block exits. When the agent forgets
the instance (restarted without persisted state), the heartbeat registers it again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp

from msa_gateway.discovery.consul import format_wait
from msa_gateway.errors import DiscoveryError
from msa_gateway.tasks import Supervised, Supervisor

if TYPE_CHECKING:
    from msa_gateway.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HttpCheck:
    """The agent GETs ``url`` every ``interval``: 2xx passing, 429 warning, anything else critical."""

    url: str
    interval: float = 10.0
    timeout: float = 5.0
    deregister_critical_after: float | None = None


@dataclass(frozen=True, slots=True)
class TtlCheck:
    """The instance reports itself passing every ``ttl / 3``; silence for ``ttl`` makes it critical."""

    ttl: float = 15.0
    deregister_critical_after: float | None = None


class ConsulRegistration:
    """Register one instance with the Consul agent while the ``async with`` block runs."""

    def __init__(  # noqa: PLR0913 - keyword-only settings, built by from_settings
        self,
        service: str,
        port: int,
        *,
        instance_id: str | None = None,
        address: str = "",
        tags: Sequence[str] = (),
        meta: Mapping[str, str] | None = None,
        weights: tuple[int, int] = (1, 1),
        check: HttpCheck | TtlCheck | None = None,
        consul_url: str = "http://127.0.0.1:8500",
        token: str | None = None,
        timeout: float = 10.0,
        tasks: Supervisor | None = None,
    ) -> None:
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} out of range 1-65535")
        self.service, self.port, self.address = service, port, address
        self.instance_id = instance_id or f"{service}-{socket.gethostname()}-{port}"
        self.check_id = f"service:{self.instance_id}"
        self.tags, self.meta, self.weights, self.check = tuple(tags), dict(meta or {}), weights, check
        self.consul_url = consul_url.rstrip("/")
        self._headers = {"X-Consul-Token": token} if token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._tasks = tasks or Supervisor()
        self._heartbeat: Supervised | None = None

    @classmethod
    def from_settings(cls, settings: Settings, service: str, port: int, **kwargs: Any) -> ConsulRegistration:
        """Build with the agent address and token from ``CONSUL_*`` settings."""
        url = f"{settings.consul_scheme}://{settings.consul_host}:{settings.consul_port}"
        return cls(service, port, consul_url=url, token=settings.consul_token, **kwargs)

    def payload(self) -> dict[str, Any]:
        """Return the ``/v1/agent/service/register`` body."""
        body: dict[str, Any] = {
            "ID": self.instance_id,
            "Name": self.service,
            "Tags": list(self.tags),
            "Address": self.address,
            "Port": self.port,
            "Meta": self.meta,
            "Weights": {"Passing": self.weights[0], "Warning": self.weights[1]},
        }
        check: dict[str, Any] | None = None
        if isinstance(self.check, HttpCheck):
            check = {
                "HTTP": self.check.url,
                "Interval": format_wait(self.check.interval),
                "Timeout": format_wait(self.check.timeout),
            }
        elif isinstance(self.check, TtlCheck):
            check = {"TTL": format_wait(self.check.ttl)}
        if check is not None and self.check is not None:
            check.update(CheckID=self.check_id, Name=f"Service '{self.service}' check")
            if self.check.deregister_critical_after is not None:
                check["DeregisterCriticalServiceAfter"] = format_wait(self.check.deregister_critical_after)
            body["Check"] = check
        return body

    async def __aenter__(self) -> ConsulRegistration:
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        try:
            await self.register()
            if isinstance(self.check, TtlCheck):
                await self.pass_ttl()
                self._heartbeat = self._tasks.spawn(
                    "consul_ttl", functools.partial(self._keep_passing, self.check.ttl), key=self.instance_id
                )
        except BaseException:
            await self._session.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._heartbeat is not None:
            await self._heartbeat.stop()
            self._heartbeat = None
        try:
            await self.deregister()
        except DiscoveryError as err:
            log.warning("consul: could not deregister %s: %s", self.instance_id, err)
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None

    async def register(self) -> None:
        """Register (or re-register) the instance and its check."""
        await self._put(
            "/v1/agent/service/register", json=self.payload(), params={"replace-existing-checks": "true"}
        )
        log.info("consul: registered %s (%s:%d)", self.instance_id, self.service, self.port)

    async def deregister(self) -> None:
        """Remove the instance and its checks from the agent."""
        await self._put(f"/v1/agent/service/deregister/{quote(self.instance_id, safe='')}")
        log.info("consul: deregistered %s", self.instance_id)

    async def pass_ttl(self, note: str = "") -> None:
        """Mark the TTL check passing and restart its clock."""
        params = {"note": note} if note else None
        await self._put(f"/v1/agent/check/pass/{quote(self.check_id, safe='')}", params=params)

    async def _keep_passing(self, ttl: float) -> None:
        """Report passing every ``ttl / 3``; re-register when the agent no longer knows the check."""
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                await self.pass_ttl()
            except _UnknownCheck:
                log.warning("consul: agent lost %s; registering it again", self.instance_id)
                try:
                    await self.register()
                    await self.pass_ttl()
                except DiscoveryError as err:
                    log.warning("consul: re-registering %s failed: %s", self.instance_id, err)
            except DiscoveryError as err:
                log.warning("consul: TTL heartbeat for %s failed: %s", self.instance_id, err)

    async def _put(self, path: str, **kwargs: Any) -> None:
        assert self._session is not None, "use ConsulRegistration as an async context manager"
        url = self.consul_url + path
        try:
            async with self._session.put(url, **kwargs) as resp:
                text = (await resp.text())[:300].strip()
                if resp.status == 404 and "/agent/check/" in path:
                    raise _UnknownCheck(text)
                if resp.status == 403:
                    raise DiscoveryError(
                        f"Consul ACL token rejected (403) on {path}: {text!r}; "
                        "CONSUL_TOKEN needs service:write"
                    )
                if resp.status != 200:
                    raise DiscoveryError(f"Consul {self.consul_url} answered {resp.status} to {path}: {text}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise DiscoveryError(f"Consul {self.consul_url} unreachable ({path}): {exc!r}") from exc


class _UnknownCheck(DiscoveryError):
    """The agent does not know the check (404): the registration was lost."""
