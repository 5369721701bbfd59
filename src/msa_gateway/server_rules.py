"""Pure rules of the gateway's HTTP/1.1 server side: limits, framing, refusals, their bytes.

No I/O here (``protocol.py`` applies them to a connection): what a client may send before its
request reaches the application, which framing headers are refused (RFC 9112 sections 6 and 7),
and the complete JSON error response a refusal is answered with.
"""

from __future__ import annotations

import http
from dataclasses import dataclass

from msa_gateway.errors import error_parts


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Limits on what a client may send before its request reaches the application."""

    max_request_line: int = 8 * 1024  # bytes of the request target (nginx large_client_header_buffers 8k)
    max_header_bytes: int = 32 * 1024  # bytes of the whole head (nginx: 4 x 8k)
    max_headers: int = 100  # header lines (Envoy max_headers_count: 100)
    head_timeout: float = 10.0  # seconds from the first byte of a request to the end of its head

    def __post_init__(self) -> None:
        for name in ("max_request_line", "max_header_bytes", "max_headers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not self.head_timeout > 0:
            raise ValueError("head_timeout must be > 0")


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a request is refused before it reaches the application, and how it is answered."""

    status: int
    error: str
    detail: str
    reason: str


def too_long_url(limit: int) -> Rejection:
    """The request target is over ``limit`` bytes."""
    return Rejection(414, "uri_too_long", f"the request target is longer than {limit} bytes", "request_line")


def too_many_headers(limit: int) -> Rejection:
    """The head has more than ``limit`` fields."""
    return Rejection(431, "headers_too_large", f"the request has more than {limit} headers", "header_count")


def too_large_head(limit: int) -> Rejection:
    """The head is over ``limit`` bytes."""
    return Rejection(
        431, "headers_too_large", f"the request head is larger than {limit} bytes", "header_bytes"
    )


def framing_problem(headers: list[tuple[bytes, bytes]], http_version: str) -> Rejection | bool:
    """Return why a request's framing headers are refused (RFC 9112 6.1, 6.3), else whether it is chunked.

    Only one ``Transfer-Encoding`` line whose value is ``chunked`` (case-insensitive, as RFC 9112
    section 7 says, and as nginx, HAProxy and Envoy accept) is forwarded: the gateway re-frames the
    body itself, so the upstream always sees plain ``chunked``.
    """
    te: bytes | None = None
    lines = 0
    has_length = False
    for name, value in headers:
        if name == b"transfer-encoding":
            te = value
            lines += 1
        elif name == b"content-length":
            has_length = True
    if te is None:
        return False
    if lines > 1:
        return Rejection(400, "bad_request", "more than one Transfer-Encoding header", "te_repeated")
    if has_length:
        detail = "Transfer-Encoding and Content-Length together"
        return Rejection(400, "bad_request", detail, "te_with_length")
    if http_version == "1.0":
        return Rejection(400, "bad_request", "Transfer-Encoding on an HTTP/1.0 request", "te_http10")
    if te.strip(b" \t").lower() != b"chunked":
        detail = "only Transfer-Encoding: chunked is supported"
        return Rejection(501, "not_implemented", detail, "te_unsupported")
    return True


def too_much_framing(limit: int) -> Rejection:
    """The chunk extensions and trailers of a body went over ``limit`` bytes."""
    detail = f"chunk extensions and trailers are larger than {limit} bytes"
    return Rejection(400, "bad_request", detail, "chunk_framing")


def head_size(method: bytes, url: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """Return the size of a parsed head written canonically (``Name: value`` lines, CRLF ends).

    That is its size on the wire unless the client pads it with extra whitespace.
    """
    request_line = len(method) + 1 + len(url) + len(b" HTTP/1.1\r\n")
    return request_line + sum(len(name) + len(value) + 4 for name, value in headers) + 2


def response_bytes(
    status: int, error: str, detail: str, request_id: str, extra: list[tuple[bytes, bytes]]
) -> bytes:
    """Return a complete ``Connection: close`` JSON error response."""
    own, body = error_parts(status, error, detail, request_id, close=True)
    phrase = http.HTTPStatus(status).phrase.encode()
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, phrase)]
    headers = [*extra, *own]
    lines.extend(b"%s: %s\r\n" % (name, value) for name, value in headers)
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)
