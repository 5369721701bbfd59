"""One exception tree, and the one place where errors become JSON responses.

    GatewayError
    ├── ConfigError            bad settings or YAML; start-up fails with file, key and reason
    ├── DiscoveryError         a registry could not be read (the provider is retried)
    └── HTTPError              answered to the client as JSON with ``status``
        ├── BadRequest               400  e.g. a path that climbs out of its service
        ├── Unauthorized             401  + WWW-Authenticate (no or a bad credential)
        ├── Forbidden                403  e.g. an IP rule refuses the client
        │   └── InsufficientScope    403  + WWW-Authenticate (a JWT claim rule denies)
        ├── ServiceNotFound          404
        ├── RequestTimeout           408  the request body stalled (Connection: close)
        ├── PayloadTooLarge          413  (Connection: close)
        ├── TooManyRequests          429  + Retry-After and the RateLimit headers
        ├── NoHealthyInstance        503  + Retry-After
        ├── Overloaded               503  + Retry-After
        ├── UpstreamError            502  refused, reset, invalid response
        └── UpstreamTimeout          504

Bodies never carry a stack trace or an upstream address. Every error the gateway answers, from
the proxy (``render``), the HTTP protocol before the application (``protocol.response_bytes``)
or its own endpoints (``error_response``), has the same body ``{"error", "detail",
"request_id"}`` and the same headers, built by ``error_parts`` with the request's real id.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from starlette.responses import Response


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A configuration mistake, reported as ``file: key: reason``."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        self.source, self.key, self.reason = source, key, reason
        super().__init__(f"{source}: {key}: {reason}")


class DiscoveryError(GatewayError):
    """A registry was unreachable or answered something unusable."""


class HTTPError(GatewayError):
    """An error answered to the client."""

    status = 500
    error = "internal_error"
    retry_after: int | None = None
    close = False  # answer with Connection: close (the rest of the request is not read)
    headers: tuple[tuple[bytes, bytes], ...] = ()  # more response headers (e.g. WWW-Authenticate)

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(HTTPError):
    status, error = 400, "bad_request"


class Unauthorized(HTTPError):
    """No credential, or one that does not verify; ``challenge`` is the WWW-Authenticate value."""

    status, error = 401, "unauthorized"

    def __init__(self, detail: str, challenge: bytes, error: str = "unauthorized") -> None:
        super().__init__(detail)
        self.error = error
        self.headers = ((b"www-authenticate", challenge),)


class Forbidden(HTTPError):
    status, error = 403, "forbidden"


class InsufficientScope(Forbidden):
    """A verified token whose claims a rule refuses (RFC 6750 ``insufficient_scope``)."""

    error = "insufficient_scope"

    def __init__(self, detail: str, challenge: bytes) -> None:
        super().__init__(detail)
        self.headers = ((b"www-authenticate", challenge),)


class ServiceNotFound(HTTPError):
    status, error = 404, "service_not_found"


class RequestTimeout(HTTPError):
    status, error, close = 408, "request_timeout", True


class PayloadTooLarge(HTTPError):
    status, error, close = 413, "payload_too_large", True


class TooManyRequests(HTTPError):
    """A rate limit refused the request; ``headers`` are the IETF RateLimit headers."""

    status, error = 429, "rate_limited"

    def __init__(self, detail: str, retry_after: int, headers: tuple[tuple[bytes, bytes], ...]) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.headers = headers


class NoHealthyInstance(HTTPError):
    status, error, retry_after = 503, "no_healthy_instance", 5


class Overloaded(HTTPError):
    status, error = 503, "overloaded"

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after  # the service's limits.retry_after


class UpstreamError(HTTPError):
    """The instance refused, reset, or answered something that is not HTTP."""

    status, error = 502, "bad_gateway"

    def __init__(self, detail: str, kind: str = "protocol_error", *, request_sent: bool = True) -> None:
        super().__init__(detail)
        self.kind = kind
        self.request_sent = request_sent


class UpstreamTimeout(UpstreamError):
    status, error = 504, "gateway_timeout"

    def __init__(self, detail: str, kind: str = "read_timeout", *, request_sent: bool = True) -> None:
        super().__init__(detail, kind, request_sent=request_sent)


def error_body(status: int, error: str, detail: str, request_id: str) -> bytes:
    """Return the JSON body every error response carries."""
    return orjson.dumps({"error": error, "detail": detail, "request_id": request_id})


def error_parts(
    status: int,
    error: str,
    detail: str,
    request_id: str,
    *,
    retry_after: int | None = None,
    close: bool = False,
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Return the headers and body of an error answer: the one shape every error has."""
    body = error_body(status, error, detail, request_id)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
        (b"cache-control", b"no-store"),
    ]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    if close:
        headers.append((b"connection", b"close"))
    return headers, body


def render(exc: HTTPError, request_id: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Turn ``exc`` into status, headers and body: the one place errors become HTTP."""
    headers, body = error_parts(
        exc.status, exc.error, exc.detail, request_id, retry_after=exc.retry_after, close=exc.close
    )
    headers.extend(exc.headers)
    return exc.status, headers, body


def error_response(
    status: int, error: str, detail: str, request_id: str, extra: Mapping[str, str] | None = None
) -> Response:
    """Return an error answer of the gateway's own endpoints (FastAPI), same shape as the proxy's."""
    headers, body = error_parts(status, error, detail, request_id)
    response = Response(body, status_code=status)
    response.raw_headers = [*headers, *((k.encode(), v.encode()) for k, v in (extra or {}).items())]
    return response
