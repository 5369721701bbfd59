"""The request path's compiled modules: which run compiled, running their sources instead, stale builds."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from msa_gateway.compiled import PACKAGE, PURE_ENV, compiled_modules, listed, stale_extensions
from tests.support.fake_upstream import make_runtime

SUFFIX = EXTENSION_SUFFIXES[0]


def origin_of(module: str, *, pure: bool) -> str:
    """Return where ``module`` is imported from in a fresh interpreter, with or without ``PURE_ENV``."""
    env = {k: v for k, v in os.environ.items() if k != PURE_ENV} | ({PURE_ENV: "1"} if pure else {})
    code = f"import {module} as m; print(m.__file__)"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_every_listed_module_has_its_source_in_the_package() -> None:
    names = listed()
    assert "msa_gateway.proxy.attempts" in names and "msa_gateway.write_batch" in names
    for name in names:
        assert (PACKAGE.parent / (name.replace(".", "/") + ".py")).is_file(), name


def test_the_suite_runs_on_what_make_builds() -> None:
    # `make` builds every listed module in place; MSA_GATEWAY_PURE=1 runs none of them compiled
    expected = [] if os.environ.get(PURE_ENV) else listed()
    assert compiled_modules() == expected


def test_pure_imports_the_sources_and_the_default_the_extensions() -> None:
    module = "msa_gateway.proxy.native_conn"
    assert origin_of(module, pure=True).endswith("native_conn.py")
    built = (PACKAGE / "proxy" / "native_conn").with_suffix(SUFFIX).exists()
    assert origin_of(module, pure=False).endswith(SUFFIX if built else "native_conn.py")


def fake_package(root: Path) -> Path:
    package = root / "msa_gateway"
    (package / "proxy").mkdir(parents=True)
    (package / "compiled.txt").write_text("# a comment\nwrite_batch.py\nproxy/attempts.py\n")
    for source in ("write_batch.py", "proxy/attempts.py"):
        (package / source).write_text("")
    return package


def test_a_source_edited_after_the_build_is_stale(tmp_path: Path) -> None:
    package = fake_package(tmp_path)
    assert stale_extensions(package) == []  # nothing built: nothing stale
    built = tmp_path / f"msa_gateway__mypyc{SUFFIX}"
    built.write_bytes(b"")
    os.utime(package / "write_batch.py", (1_000, 1_000))
    os.utime(package / "proxy" / "attempts.py", (3_000, 3_000))
    os.utime(built, (2_000, 2_000))
    assert listed(package) == ["msa_gateway.write_batch", "msa_gateway.proxy.attempts"]
    assert stale_extensions(package) == ["msa_gateway.proxy.attempts"]
    os.utime(built, (4_000, 4_000))
    assert stale_extensions(package) == []


async def test_the_start_up_line_says_how_many_run_compiled(caplog: pytest.LogCaptureFixture) -> None:
    rt, _, _ = make_runtime()
    with caplog.at_level(logging.INFO, "msa_gateway"):
        await rt.start()
    await rt.aclose()
    (record,) = [r for r in caplog.records if r.getMessage() == "gateway starting"]
    running = 0 if os.environ.get(PURE_ENV) else len(listed())
    assert getattr(record, "compiled", None) == f"{running}/{len(listed())}"
