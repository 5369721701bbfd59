"""The provider table names the discovery types; the setting accepts exactly its keys."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from msa_gateway.discovery.providers import PROVIDERS, REGISTRARS, _load
from msa_gateway.settings import Settings


@pytest.mark.parametrize("name", list(PROVIDERS))
def test_every_provider_name_is_accepted_and_loads_a_class_of_that_name(name: str) -> None:
    assert Settings(_env_file=None, service_discovery_type=name).service_discovery_type == name  # type: ignore[call-arg]
    cls = _load(PROVIDERS[name])
    assert cls.name == name and callable(cls.from_settings)


def test_every_registrar_belongs_to_a_provider() -> None:
    assert set(REGISTRARS) <= set(PROVIDERS)
    assert all(callable(_load(ref).from_settings) for ref in REGISTRARS.values())


def test_an_unknown_discovery_type_lists_the_known_ones() -> None:
    with pytest.raises(
        ValidationError, match="unknown discovery type 'zookeeper'; known: static, consul, redis, etcd"
    ):
        Settings(_env_file=None, service_discovery_type="zookeeper")  # type: ignore[call-arg]
