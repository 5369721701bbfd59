"""The upstream client table names the clients; the setting accepts exactly its keys."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from msa_gateway.proxy.upstream import UPSTREAM_CLIENTS, create_client
from msa_gateway.settings import Settings


@pytest.mark.parametrize("name", list(UPSTREAM_CLIENTS))
async def test_every_table_entry_creates_a_client_of_that_name(name: str) -> None:
    client = create_client(name)
    assert client.name == name
    await client.aclose()


@pytest.mark.parametrize("name", list(UPSTREAM_CLIENTS))
def test_the_setting_accepts_every_table_name(name: str) -> None:
    assert Settings(_env_file=None, upstream_client=name).upstream_client == name  # type: ignore[call-arg]


def test_the_setting_refuses_other_names_and_lists_the_known_ones() -> None:
    with pytest.raises(ValidationError, match="unknown upstream client 'httpx'; known: aiohttp, native"):
        Settings(_env_file=None, upstream_client="httpx")  # type: ignore[call-arg]
