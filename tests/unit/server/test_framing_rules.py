"""The pure framing rules: which request and response ``Transfer-Encoding`` heads are refused."""

from __future__ import annotations

import pytest

from msa_gateway.proxy.native_conn import plain_framing
from msa_gateway.server_rules import framing_problem

TE = b"transfer-encoding"


@pytest.mark.parametrize(
    ("headers", "version", "status"),
    [
        ([(TE, b"gzip, chunked")], "1.1", 501),
        ([(TE, b"xchunked")], "1.1", 501),
        ([(TE, b"chunked, identity")], "1.1", 501),
        ([(TE, b"chunked"), (TE, b"chunked")], "1.1", 400),
        ([(TE, b"chunked"), (b"content-length", b"5")], "1.1", 400),
        ([(TE, b"chunked")], "1.0", 400),
    ],
)
def test_refused_request_framing(headers: list[tuple[bytes, bytes]], version: str, status: int) -> None:
    problem = framing_problem(headers, version)
    assert not isinstance(problem, bool) and problem.status == status


@pytest.mark.parametrize("value", [b"chunked", b"CHUNKED", b" chunked\t"])
def test_one_chunked_line_is_chunked(value: bytes) -> None:
    assert framing_problem([(b"host", b"a"), (TE, value)], "1.1") is True


def test_no_transfer_encoding_is_not_chunked() -> None:
    assert framing_problem([(b"host", b"a"), (b"content-length", b"3")], "1.0") is False


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        ([(b"Transfer-Encoding", b"chunked")], True),
        ([(b"Content-Length", b"3")], True),
        ([(b"Transfer-Encoding", b"gzip, chunked")], False),
        ([(b"Transfer-Encoding", b"chunked"), (b"transfer-encoding", b"chunked")], False),
    ],
)
def test_response_framing(headers: list[tuple[bytes, bytes]], ok: bool) -> None:
    assert plain_framing(headers) is ok
