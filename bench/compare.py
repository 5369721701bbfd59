"""``python -m bench.compare``: bench an older commit's gateway against this checkout's, in one run.

Checks REV (default ``HEAD~1``) out as a git worktree (``/tmp/bench-old`` by default, reused and moved to
REV when it exists), gives it its own venv with its own dependencies, then runs ``bench.run`` with
``--variant old='<worktree>/.venv/bin/msa-gateway run'``: the old gateway is started exactly like this
checkout's (same port handling, config, core, log) and reported next to it, with the ratios
``gateway/old``. Every other argument goes to ``bench.run`` (e.g. ``--runs 3 --only get``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import run
from bench.procs import REPO


@dataclass(frozen=True, slots=True)
class CompareOptions:
    """The commit to compare with, its worktree, its name in the report, and bench.run's arguments."""

    rev: str
    worktree: Path
    name: str
    bench_args: tuple[str, ...]


def parse_compare_args(argv: Sequence[str] | None) -> CompareOptions:
    """Parse our options; everything else is passed on to ``bench.run``."""
    p = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description="bench REV's gateway against this checkout's in one bench.run "
        "(other arguments go to bench.run)",
    )
    p.add_argument("--rev", default="HEAD~1", help="the commit to compare with (HEAD~1)")
    p.add_argument("--dir", type=Path, default=Path("/tmp/bench-old"), help="its worktree (/tmp/bench-old)")
    p.add_argument("--name", default="old", help="its configuration name in the report (old)")
    known, rest = p.parse_known_args(argv)
    return CompareOptions(known.rev, known.dir, known.name, tuple(rest))


def setup_commands(opts: CompareOptions, commit: str, worktree_exists: bool) -> list[list[str]]:
    """Return the commands that put ``commit`` into the worktree and install it into the worktree's venv."""
    tree, venv = str(opts.worktree), str(opts.worktree / ".venv")
    checkout = (
        ["git", "-C", tree, "checkout", "--quiet", "--detach", commit]
        if worktree_exists
        else ["git", "worktree", "add", "--detach", tree, commit]
    )
    # a commit with a compiled request path (setup.py) is compiled as `make` does, so both sides are
    compile_path = (
        f"test ! -f {tree}/setup.py || ({venv}/bin/pip install --quiet 'mypy>=2.4,<3' 'setuptools>=68'"
        f" && {venv}/bin/python {tree}/setup.py -q build_ext --inplace >/dev/null)"
    )
    return [
        checkout,
        [sys.executable, "-m", "venv", venv],
        [f"{venv}/bin/pip", "install", "--quiet", "-e", tree],
        ["sh", "-c", compile_path],
    ]


def bench_argv(opts: CompareOptions) -> list[str]:
    """Return ``bench.run``'s arguments: the old gateway as a command variant, then the passed-on ones."""
    command = f"{opts.worktree / '.venv' / 'bin' / 'msa-gateway'} run"
    return ["--variant", f"{opts.name}={command}", *opts.bench_args]


def main(argv: Sequence[str] | None = None) -> int:
    """Prepare the old checkout, then run the benchmark; return bench.run's exit status."""
    opts = parse_compare_args(argv)
    run.parse_args(bench_argv(opts))  # a bad argument stops here, before anything is checked out
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{opts.rev}^{{commit}}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if commit.returncode != 0:
        print(f"bench.compare: unknown revision {opts.rev!r}: {commit.stderr.strip()}", file=sys.stderr)
        return 2
    sha = commit.stdout.strip()
    exists = (opts.worktree / ".git").exists()
    if opts.worktree.exists() and not exists:
        print(f"bench.compare: {opts.worktree} exists and is not a git worktree", file=sys.stderr)
        return 2
    for command in setup_commands(opts, sha, exists):
        print(f"bench.compare: {' '.join(command)}", flush=True)
        subprocess.run(command, cwd=REPO, check=True)
    print(f"bench.compare: {opts.name} = {opts.rev} ({sha[:12]}), gateway = {REPO}", flush=True)
    return run.main(bench_argv(opts))


if __name__ == "__main__":
    sys.exit(main())
