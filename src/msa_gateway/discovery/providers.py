"""The provider table: ``SERVICE_DISCOVERY_TYPE`` names an import string, loaded on demand.

The setting's allowed values are this table's keys. A new provider is one module plus one entry
here (and in the TYPE_CHECKING tuples at the end, so mypy checks it against the protocol).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from msa_gateway.discovery.base import Provider, ProviderClass, Registrar, RegistrarClass
from msa_gateway.settings import GatewayConfig, Settings
from msa_gateway.tasks import Supervisor

PROVIDERS: dict[str, str] = {
    "static": "msa_gateway.discovery.static:StaticProvider",
    "consul": "msa_gateway.discovery.consul:ConsulProvider",
    "redis": "msa_gateway.discovery.redis:RedisProvider",
    "etcd": "msa_gateway.discovery.etcd:EtcdProvider",
}
REGISTRARS: dict[str, str] = {
    "redis": "msa_gateway.discovery.redis_registry:RedisRegistrar",
    "etcd": "msa_gateway.discovery.etcd_registry:EtcdRegistrar",
}
# Why the other providers take no registrations through the gateway, and where they go instead.
NO_REGISTRAR: dict[str, str] = {
    "static": "SERVICE_DISCOVERY_TYPE=static takes no registrations: add the instance to the YAML file",
    "consul": "SERVICE_DISCOVERY_TYPE=consul takes no registrations through the gateway: register with the "
    "Consul agent (PUT /v1/agent/service/register)",
}


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def create_provider(settings: Settings, config: GatewayConfig, tasks: Supervisor | None = None) -> Provider:
    """Return the provider ``settings.service_discovery_type`` names; it starts its tasks on ``tasks``."""
    cls: ProviderClass = _load(PROVIDERS[settings.service_discovery_type])
    return cls.from_settings(settings, config, tasks)


def create_registrar(settings: Settings) -> Registrar | None:
    """Return a registrar for the active provider, or None when it takes none (``NO_REGISTRAR`` says why)."""
    ref = REGISTRARS.get(settings.service_discovery_type)
    if ref is None:
        return None
    cls: RegistrarClass = _load(ref)
    return cls.from_settings(settings)


if TYPE_CHECKING:  # mypy checks every table entry against its protocol
    from msa_gateway.discovery.consul import ConsulProvider
    from msa_gateway.discovery.etcd import EtcdProvider
    from msa_gateway.discovery.etcd_registry import EtcdRegistrar
    from msa_gateway.discovery.redis import RedisProvider
    from msa_gateway.discovery.redis_registry import RedisRegistrar
    from msa_gateway.discovery.static import StaticProvider

    _PROVIDERS: tuple[ProviderClass, ...] = (StaticProvider, ConsulProvider, RedisProvider, EtcdProvider)
    _REGISTRARS: tuple[RegistrarClass, ...] = (RedisRegistrar, EtcdRegistrar)
