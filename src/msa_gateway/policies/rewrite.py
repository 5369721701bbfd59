"""``path_rewrite``: change the path sent upstream, by prefix or by a bounded regular expression.

It works on the raw path the route forwards (after ``strip_prefix``), byte for byte, never on a
decoded one; the query string is kept. The result is checked for ``..`` segments like any path,
so a rewrite cannot climb out of what the route exposes.

- ``{prefix: /v1, to: /v2}``: a path equal to ``/v1`` or starting with ``/v1/`` gets ``/v2`` instead
  (other paths pass unchanged).
- ``{regex: '^/items/([0-9]+)$', to: '/item/\\1'}``: the first match is replaced (Python ``re``
  syntax, ``\\1`` for groups). Bounded: the pattern is at most 256 characters and may not repeat a
  group that itself repeats (``(a+)+``, the shape of catastrophic backtracking), and the path it
  runs on is at most ``MAX_REQUEST_LINE`` bytes. A path that does not match passes unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from msa_gateway.errors import BadRequest
from msa_gateway.policies.base import ConfigStage, PolicyError
from msa_gateway.policies.parsing import block
from msa_gateway.proxy.paths import check_segments

if TYPE_CHECKING:
    from msa_gateway.policies.base import Reply
    from msa_gateway.proxy.request import ProxyRequest

MAX_PATTERN = 256
_QUANTIFIER = re.compile(r"[*+?]|\{\d*,?\d*\}")
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")


@dataclass(frozen=True, slots=True)
class RewriteConfig:
    """The parsed ``path_rewrite`` block: a prefix swap, or a pattern and its replacement."""

    to: bytes
    prefix: bytes | None = None
    regex: re.Pattern[bytes] | None = None

    def apply(self, path: bytes) -> bytes:
        """Return ``path`` rewritten (unchanged when it does not match)."""
        if self.prefix is not None:
            p = self.prefix
            if path == p or (path.startswith(p) and (p.endswith(b"/") or path[len(p)] == 0x2F)):
                rest = path[len(p) :]
                to = self.to.rstrip(b"/") if rest.startswith(b"/") else self.to
                return (to + rest) or b"/"
            return path
        assert self.regex is not None
        return self.regex.sub(self.to, path, count=1)


def _class_end(pattern: str, start: int) -> int:
    """Return the index after the character class that opens at ``start`` (``[]a]`` and ``[^]a]`` too)."""
    j = start + 1
    j += pattern.startswith("^", j)
    j += pattern.startswith("]", j)
    while j < len(pattern) and pattern[j] != "]":
        j += 2 if pattern[j] == "\\" else 1
    return j + 1


def nested_repeat(pattern: str) -> bool:
    """Return whether a quantified group of ``pattern`` holds a quantifier itself, at any depth.

    ``(a+)+``, ``((ab)*c)*`` or ``(?:x{2,})+`` can take exponential time on a path that nearly
    matches; a group is tracked from its ``(`` to its ``)``, escapes and character classes skipped.
    """
    stack: list[bool] = []  # per open group: whether it holds a quantifier
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            i = _class_end(pattern, i)
            continue
        if c == "(":
            stack.append(False)
            i += 2 if pattern.startswith("(?", i) else 1
            continue
        quantifier = _QUANTIFIER.match(pattern, i)
        if c == ")" and stack:
            inner = stack.pop()
            after = _QUANTIFIER.match(pattern, i + 1)
            if inner and after is not None and after.group() != "?":
                return True
            if stack and inner:
                stack[-1] = True
            i += 1
            continue
        if quantifier is not None and quantifier.group() != "?":
            if stack:
                stack[-1] = True
            i = quantifier.end()
            continue
        i += 1
    return False


def _path(raw: Any, key: str) -> bytes:
    if not isinstance(raw, str) or not _SAFE_PATH.match(raw) or check_dots(raw):
        raise PolicyError(key, f"{raw!r} is not a path starting with '/' (no '..', no spaces)")
    return raw.encode("ascii")


def check_dots(path: str) -> bool:
    """Return whether ``path`` holds a ``..`` segment."""
    try:
        check_segments(path.encode("latin-1"))
    except BadRequest:
        return True
    return False


def parse(raw: Any) -> RewriteConfig:
    """Parse ``{prefix: ..., to: ...}`` or ``{regex: ..., to: ...}``."""
    data = block(raw, {"prefix", "regex", "to"})
    if "to" not in data:
        raise PolicyError("to", "required")
    if ("prefix" in data) == ("regex" in data):
        raise PolicyError("prefix", "give exactly one of prefix or regex")
    if "prefix" in data:
        return RewriteConfig(to=_path(data["to"], "to"), prefix=_path(data["prefix"], "prefix"))
    pattern = data["regex"]
    if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN:
        raise PolicyError("regex", f"must be a pattern of 1-{MAX_PATTERN} characters")
    if nested_repeat(pattern):
        raise PolicyError("regex", "a repeated group may not itself repeat (catastrophic backtracking)")
    try:
        compiled = re.compile(pattern.encode("utf-8"))
    except re.error as exc:
        raise PolicyError("regex", f"invalid pattern: {exc}") from None
    to = data["to"]
    if not isinstance(to, str) or not to.startswith("/") or "?" in to or "#" in to:
        raise PolicyError("to", "must be a path starting with '/' (no '?': the client's query is kept)")
    try:
        compiled.sub(to.encode("utf-8"), b"")
    except (re.error, IndexError) as exc:
        raise PolicyError("to", f"invalid replacement: {exc}") from None
    return RewriteConfig(to=to.encode("utf-8"), regex=compiled)


class PathRewrite(ConfigStage):
    """The request stage: rewrite ``request.rest``, the path that goes upstream."""

    name = "path_rewrite"
    __slots__ = ()
    config: RewriteConfig

    async def __call__(self, request: ProxyRequest) -> Reply | None:
        """Rewrite the path; 400 when the result is not a clean absolute path."""
        path = self.config.apply(request.rest)
        if not path.startswith(b"/"):
            raise BadRequest("the rewritten path does not start with '/'")
        check_segments(path)
        request.rest = path
        return None
