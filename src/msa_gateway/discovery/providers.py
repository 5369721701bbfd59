"""The provider table: ``SERVICE_DISCOVERY_TYPE`` names an import string, loaded on demand."""

from __future__ import annotations

import importlib
from typing import Any

from msa_gateway.discovery.base import Provider, Registrar
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
    cls = _load(PROVIDERS[settings.service_discovery_type])
    provider: Provider = cls.from_settings(settings, config, tasks)
    return provider


def create_registrar(settings: Settings) -> Registrar | None:
    """Return a registrar for the active provider, or None when it takes none (``NO_REGISTRAR`` says why)."""
    ref = REGISTRARS.get(settings.service_discovery_type)
    if ref is None:
        return None
    registrar: Registrar = _load(ref).from_settings(settings)
    return registrar
