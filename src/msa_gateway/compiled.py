"""Which request-path modules run compiled (mypyc C extensions, see setup.py), and running without them.

The modules in ``compiled.txt`` are ordinary typed Python; a build with mypy at hand turns them into
C extensions beside their sources, which Python's import then prefers. ``MSA_GATEWAY_PURE=1`` in
the environment makes this package import their sources instead (same behaviour, slower): for
profilers and coverage, which see only interpreted code, and to rule the compiler out.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec, SourceFileLoader
from importlib.util import find_spec, spec_from_file_location
from pathlib import Path
from types import ModuleType

PACKAGE = Path(__file__).parent
PURE_ENV = "MSA_GATEWAY_PURE"


def listed(package: Path = PACKAGE) -> list[str]:
    """Return the module names ``compiled.txt`` lists (``msa_gateway.proxy.attempts``, ...)."""
    lines = (package / "compiled.txt").read_text().splitlines()
    paths = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return ["msa_gateway." + path.removesuffix(".py").replace("/", ".") for path in paths]


def is_extension(name: str) -> bool:
    """Return whether importing ``name`` loads (or loaded) a C extension."""
    origin = getattr(sys.modules.get(name), "__file__", None)
    if origin is None:
        spec = find_spec(name)
        origin = spec.origin if spec is not None else None
    return origin is not None and origin.endswith(tuple(EXTENSION_SUFFIXES))


def compiled_modules() -> list[str]:
    """Return the listed modules that run compiled here."""
    return [name for name in listed() if is_extension(name)]


def stale_extensions(package: Path = PACKAGE) -> list[str]:
    """Return the listed sources edited after the in-place build, and extensions no longer listed.

    mypyc puts the code of every listed module in one shared library (``msa_gateway__mypyc``);
    editing a source does not rebuild it, and Python keeps importing the old code; a module taken
    off the list keeps its extension beside its source, which then fails to import: the test
    suite refuses to run on either (``make compile`` rebuilds and removes the leftovers).
    """
    names = listed(package)
    built = [package.parent / f"msa_gateway__mypyc{suffix}" for suffix in EXTENSION_SUFFIXES]
    times = [path.stat().st_mtime for path in built if path.exists()]
    sources = {name: package.parent / (name.replace(".", "/") + ".py") for name in names}
    edited = [name for name, source in sources.items() if times and source.stat().st_mtime > max(times)]
    return edited + [name for name in extensions_beside(package) if name not in names]


def extensions_beside(package: Path = PACKAGE) -> list[str]:
    """Return the modules of ``package`` that have a C extension beside their source."""
    found = []
    for path in sorted(package.rglob("*")):
        suffix = next((s for s in EXTENSION_SUFFIXES if path.name.endswith(s)), None)  # longest first
        if suffix is not None:
            found.append(path.relative_to(package.parent).as_posix().removesuffix(suffix).replace("/", "."))
    return found


class SourceFirst(MetaPathFinder):
    """Imports the listed modules from their ``.py`` sources, never from a built extension."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = frozenset(names)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in self.names or not path:
            return None
        leaf = fullname.rpartition(".")[2] + ".py"
        for folder in path:
            source = Path(folder) / leaf
            if source.exists():
                return spec_from_file_location(
                    fullname, source, loader=SourceFileLoader(fullname, str(source))
                )
        return None


def prefer_sources_when_asked() -> None:
    """With ``MSA_GATEWAY_PURE`` set, import the listed modules from their sources (once)."""
    if os.environ.get(PURE_ENV) and not any(isinstance(f, SourceFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, SourceFirst(listed()))
