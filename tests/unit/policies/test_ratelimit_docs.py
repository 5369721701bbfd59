"""Every YAML example of docs/ratelimit.md is a valid gateway config (the recipes cannot rot)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from msa_gateway.settings import parse_config

DOC = Path(__file__).resolve().parents[3] / "docs" / "ratelimit.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)


def test_the_doc_has_the_reference_block_and_three_recipes() -> None:
    assert len(BLOCKS) == 4


@pytest.mark.parametrize("text", BLOCKS)
def test_each_example_parses(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPORTS_API_KEYS", "alice:alice-key-0123456789abcdef")
    data = yaml.safe_load(text)
    if "policies" in data:  # the reference block: a policies mapping of a service
        data = {"services": {"svc": data}}
    config = parse_config(data, "doc.yaml")
    assert config is not None
