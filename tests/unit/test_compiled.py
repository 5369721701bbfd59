"""The request path's compiled modules: which run compiled, running their sources instead, stale builds."""

from __future__ import annotations

import ast
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


def mypyc_hazards(source: str) -> list[str]:
    """Name what mypyc compiles wrongly or not at all: async generators, an await inside a `finally`.

    A compiled coroutine's `finally` that awaits re-raises whatever sys.exc_info() holds when it
    ends, and a compiled caller resuming it with an exception (a cancelled task awaited) leaves
    that exception there: the coroutine raises it after handling it.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.AsyncFunctionDef) and any(
            isinstance(n, ast.Yield | ast.YieldFrom) for n in ast.walk(node)
        ):
            found.append(f"async generator {node.name}")
        if isinstance(node, ast.Try | ast.TryStar):
            inside = [n for stmt in node.finalbody for n in ast.walk(stmt)]
            if any(isinstance(n, ast.Await | ast.AsyncWith | ast.AsyncFor) for n in inside):
                found.append(f"await in a finally at line {node.lineno}")
    return found


def test_the_hazard_check_finds_both_hazards() -> None:
    source = "async def gen():\n    yield 1\n\nasync def f(t):\n    try:\n        pass\n    finally:\n        await t\n"
    assert mypyc_hazards(source) == ["async generator gen", "await in a finally at line 5"]
    assert (
        mypyc_hazards("async def f(t):\n    try:\n        await t\n    finally:\n        t.cancel()\n") == []
    )


def test_no_listed_module_has_an_async_generator_or_awaits_in_a_finally() -> None:
    for name in listed():
        source = (PACKAGE.parent / (name.replace(".", "/") + ".py")).read_text()
        assert mypyc_hazards(source) == [], name


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


def test_an_extension_left_beside_a_module_no_longer_listed_is_stale(tmp_path: Path) -> None:
    package = fake_package(tmp_path)
    (tmp_path / f"msa_gateway__mypyc{SUFFIX}").write_bytes(b"")
    for module in ("write_batch", "proxy/attempts", "proxy/chain"):
        (package / module).with_suffix(SUFFIX).write_bytes(b"")
    assert stale_extensions(package) == ["msa_gateway.proxy.chain"]


async def test_the_start_up_line_says_how_many_run_compiled(caplog: pytest.LogCaptureFixture) -> None:
    rt, _, _ = make_runtime()
    with caplog.at_level(logging.INFO, "msa_gateway"):
        await rt.start()
    await rt.aclose()
    (record,) = [r for r in caplog.records if r.getMessage() == "gateway starting"]
    running = 0 if os.environ.get(PURE_ENV) else len(listed())
    assert getattr(record, "compiled", None) == f"{running}/{len(listed())}"
