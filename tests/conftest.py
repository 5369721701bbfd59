"""The suite runs on the code in the tree: never on compiled modules older than their sources."""

from __future__ import annotations

import os

import pytest

from msa_gateway.compiled import PURE_ENV, stale_extensions


def pytest_sessionstart(session: pytest.Session) -> None:
    stale = [] if os.environ.get(PURE_ENV) else stale_extensions()
    if stale:
        pytest.exit(
            f"compiled modules older than their sources, or no longer listed: {', '.join(stale)}; "
            f"run `make compile` (or set {PURE_ENV}=1 to run the sources)",
            returncode=3,
        )
