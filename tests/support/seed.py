"""The original specification (``../shared/seed``) read as data: its curl examples, ``.env`` blocks and endpoints.

The seed is the contract users arrive with, so the tests take the commands from the file itself rather
than from a copy: an example that changes there, or one added, is tested without touching the tests.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from tests.support.procs import REPO

SEED = REPO.parent / "shared" / "seed" / "000_0c9a64cb949e65c7.txt"
SEED_BASE = "http://localhost:8000"
_ENDPOINT = re.compile(r"^- `(GET|POST|PUT|DELETE) (/\S*)`", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class CurlExample:
    """One curl command of a document: the comment above it and its argv as the shell would split it."""

    comment: str
    argv: tuple[str, ...]

    @property
    def method(self) -> str:
        """Return the HTTP method curl sends (``-X``, or GET)."""
        return self.argv[self.argv.index("-X") + 1] if "-X" in self.argv else "GET"

    @property
    def url(self) -> str:
        """Return the one URL argument."""
        [url] = [a for a in self.argv if a.startswith("http://")]
        return url

    @property
    def path(self) -> str:
        """Return the URL's path (the seed's URLs carry no query)."""
        return "/" + self.url.split("://", 1)[1].split("/", 1)[1]

    @property
    def data(self) -> str | None:
        """Return the ``-d`` body, or None."""
        return self.argv[self.argv.index("-d") + 1] if "-d" in self.argv else None

    def against(self, base: str) -> list[str]:
        """Return the argv with the seed's ``http://localhost:8000`` replaced by ``base``, nothing else changed."""
        return [base + a[len(SEED_BASE) :] if a.startswith(SEED_BASE) else a for a in self.argv]


def seed_text() -> str:
    """Return the seed document; fail naming the path when the checkout has no ``../shared`` beside it."""
    if not SEED.is_file():
        raise FileNotFoundError(
            f"the seed specification is missing: {SEED} (../shared must sit beside the repo)"
        )
    return SEED.read_text(encoding="utf-8")


def fenced_blocks(text: str, *languages: str) -> list[str]:
    """Return the bodies of the fenced code blocks of ``text`` opened with one of ``languages``."""
    blocks: list[str] = []
    current: list[str] = []
    inside = False
    for line in text.splitlines():
        if not inside and line.startswith("```") and line[3:].strip() in languages:
            inside, current = True, []
        elif inside and line.startswith("```"):
            inside = False
            blocks.append("\n".join(current))
        elif inside:
            current.append(line)
    return blocks


def curl_commands(text: str) -> list[CurlExample]:
    """Return every curl command in the shell blocks of ``text`` (continuation lines joined)."""
    found = []
    for block in fenced_blocks(text, "bash", "sh"):
        comment = ""
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("#"):
                comment = line.lstrip("# ")
            elif line.startswith("curl "):
                found.append(CurlExample(comment, tuple(shlex.split(line))))
    return found


def env_blocks(text: str) -> list[str]:
    """Return the ``.env`` blocks of ``text``, verbatim."""
    return fenced_blocks(text, "env")


def listed_endpoints(text: str) -> list[tuple[str, str]]:
    """Return the (method, path template) pairs of the seed's endpoint list, e.g. ``("GET", "/health/")``."""
    return [(m.group(1), m.group(2)) for m in _ENDPOINT.finditer(text)]
