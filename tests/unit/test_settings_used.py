"""Every setting is read somewhere: a documented knob that nothing reads is a bug.

For each field of the process settings and of every config dataclass, the attribute must be
read in ``src/`` outside the modules that only define and parse it.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from msa_gateway import model
from msa_gateway.settings import GatewayConfig, Settings

SRC = Path(__file__).resolve().parents[2] / "src" / "msa_gateway"
DEFINING = {"settings.py", "model.py"}
CONFIG_TYPES = [
    model.Timeouts,
    model.HealthCheck,
    model.RetryPolicy,
    model.OutlierConfig,
    model.LimitsConfig,
    model.ServiceOptions,
    GatewayConfig,  # read by its own options_for() too, so settings.py counts for it
]


def _readers(owner: str = "") -> str:
    skip = DEFINING - {"settings.py"} if owner == "GatewayConfig" else DEFINING
    return "\n".join(p.read_text("utf-8") for p in SRC.rglob("*.py") if p.name not in skip)


def _is_read(name: str, text: str) -> bool:
    return re.search(rf"\.{re.escape(name)}\b(?!\s*=[^=])", text) is not None


FIELDS = [("Settings", name) for name in Settings.model_fields] + [
    (cls.__name__, f.name) for cls in CONFIG_TYPES for f in dataclasses.fields(cls)
]


@pytest.mark.parametrize(("owner", "name"), FIELDS, ids=[f"{o}.{n}" for o, n in FIELDS])
def test_every_setting_is_read_somewhere(owner: str, name: str) -> None:
    assert _is_read(name, _readers(owner)), f"{owner}.{name} is read nowhere in src/ (outside settings/model)"


def test_the_check_itself_catches_an_unread_field() -> None:
    assert not _is_read("no_such_setting_anywhere", _readers())
    assert _is_read("per_try_timeout", "x = policy.per_try_timeout\n")
    assert not _is_read("per_try_timeout", "self.per_try_timeout = 3\n")
