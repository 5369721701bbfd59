"""Routing on the raw path: service split, dot-segment rejection, target building."""

from __future__ import annotations

import pytest

from msa_gateway.errors import BadRequest
from msa_gateway.proxy.paths import check_segments, split_service, upstream_target


@pytest.mark.parametrize(
    ("raw", "name", "rest"),
    [
        (b"/svc", "svc", b"/"),
        (b"/svc/", "svc", b"/"),
        (b"/svc/a/b", "svc", b"/a/b"),
        (b"/svc/a%2Fb", "svc", b"/a%2Fb"),
        (b"/", "", b"/"),
        (b"/s%76c/x", "s%76c", b"/x"),
    ],
)
def test_split_service(raw: bytes, name: str, rest: bytes) -> None:
    assert split_service(raw) == (name, rest)


@pytest.mark.parametrize(
    "rest",
    [
        b"/..",
        b"/../x",
        b"/a/../b",
        b"/%2e%2e/x",
        b"/%2E%2E",
        b"/.%2e/",
        b"/a%2f..",
        b"/a%2F..%2Fb",
        b"/a\\..\\b",
        b"/a%5c..",
        b"/x/..",
    ],
)
def test_dot_dot_segments_are_rejected(rest: bytes) -> None:
    with pytest.raises(BadRequest):
        check_segments(rest)


@pytest.mark.parametrize(
    "rest", [b"/", b"/a.b", b"/..a", b"/a..", b"/.well-known/x", b"/a/./b", b"/%2e", b"/...", b"/a%20b"]
)
def test_other_paths_pass(rest: bytes) -> None:
    check_segments(rest)


def test_upstream_target_keeps_query_bytes() -> None:
    assert upstream_target(b"/a%2F", b"x=%20&y") == "/a%2F?x=%20&y"
    assert upstream_target(b"/a", b"") == "/a"
