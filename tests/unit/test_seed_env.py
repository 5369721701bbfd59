"""The original specification's ``.env`` blocks, copied verbatim (inline comments included), load as intended."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from msa_gateway.settings import Settings
from tests.support.seed import env_blocks, seed_text

BLOCKS = env_blocks(seed_text())


def load_verbatim(block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Write ``block`` as ``.env`` in an empty directory and load the settings from there alone."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    (tmp_path / ".env").write_text(block + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return Settings()


def test_the_seed_has_its_three_env_blocks_and_the_first_has_an_inline_comment() -> None:
    assert len(BLOCKS) == 3
    assert "SERVICE_DISCOVERY_TYPE=static  # consul, redis, static" in BLOCKS[0].splitlines()


def test_the_main_env_block_gives_the_intended_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = load_verbatim(BLOCKS[0], tmp_path, monkeypatch)
    got = (s.host, s.port, s.debug, s.service_discovery_type)
    assert got == ("0.0.0.0", 8000, False, "static")  # the comment after "static" is not part of the value
    assert (s.consul_host, s.consul_port, s.redis_host, s.redis_port) == (
        "localhost",
        8500,
        "localhost",
        6379,
    )


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{n}" for n in range(len(BLOCKS))])
def test_every_key_of_every_env_block_reaches_its_setting(
    block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = load_verbatim(block, tmp_path, monkeypatch)
    pairs = [line.split("=", 1) for line in block.splitlines() if "=" in line and not line.startswith("#")]
    assert pairs
    for key, raw in pairs:
        value = re.split(r"\s+#", raw, maxsplit=1)[0].strip()
        assert str(getattr(s, key.lower())).lower() == value.lower(), key


def test_a_hash_needs_whitespace_before_it_to_start_a_comment_and_quotes_keep_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    block = 'CONSUL_TOKEN="abc #1"\nREDIS_PASSWORD=pw#x\nETCD_PREFIX=/svc/  # the key prefix'
    s = load_verbatim(block, tmp_path, monkeypatch)
    assert (s.consul_token, s.redis_password, s.etcd_prefix) == ("abc #1", "pw#x", "/svc/")
