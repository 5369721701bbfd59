"""Builds the request path's modules (``src/msa_gateway/compiled.txt``) as C extensions with mypyc.

The metadata lives in pyproject.toml; this file only adds the extensions. They are built when mypy
and the package's dependencies are importable where the build runs: ``make`` builds them in place
(``setup.py build_ext --inplace``), the Dockerfile with ``pip install --no-build-isolation``. A plain
``pip install .`` builds in an isolated environment without them and installs the same code,
interpreted; so does ``MSA_GATEWAY_PURE=1`` (slower, easier to profile).
"""

import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
PACKAGE = ROOT / "src" / "msa_gateway"
os.chdir(ROOT)  # mypyc and setuptools take the paths below from here, wherever setup.py is run from


def compiled_sources() -> list[str]:
    """Return the source paths listed in compiled.txt (comments and blank lines skipped)."""
    lines = (PACKAGE / "compiled.txt").read_text().splitlines()
    names = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return [f"src/msa_gateway/{name}" for name in names]


def ext_modules() -> list[object]:
    """Return the mypyc extensions, or none (pure Python) when asked to or when mypyc is missing."""
    if os.environ.get("MSA_GATEWAY_PURE"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("msa-gateway: mypy is not installed here; building the pure-Python package", file=sys.stderr)
        return []
    # Type stubs and optional packages (types-PyYAML, opentelemetry-proto) are dev dependencies: a
    # build with only the runtime ones (the Dockerfile's) reads those imports as Any. `make lint`
    # checks the types with everything installed.
    relaxed = ["--ignore-missing-imports", "--no-warn-unused-ignores"]
    return list(mypycify([*relaxed, *compiled_sources()], opt_level="3", group_name="msa_gateway"))


setup(ext_modules=ext_modules())
