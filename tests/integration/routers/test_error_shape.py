"""Every error the gateway answers has one shape and carries the request's real id."""

from __future__ import annotations

import orjson
import pytest

from msa_gateway.settings import Settings
from tests.support.gateway import parse_response, raw_request, serve_gateway, service_yaml

RID = b"rid-shape-1"
CASES = {
    "proxy_unknown_service": (b"GET /nope/x HTTP/1.1\r\nHost: g\r\n", 404),
    "own_endpoint_unknown_service": (b"GET /services/nope/info HTTP/1.1\r\nHost: g\r\n", 404),
    "own_endpoint_wrong_method": (b"DELETE /health/live HTTP/1.1\r\nHost: g\r\n", 405),
    "admin_without_token": (b"DELETE /services/svc/instances/x HTTP/1.1\r\nHost: g\r\n", 401),
    "protocol_bad_framing": (b"POST /svc/a HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: gzip\r\n", 501),
}


@pytest.mark.parametrize(("head", "status"), list(CASES.values()), ids=list(CASES))
async def test_error_bodies_and_headers_have_one_shape(head: bytes, status: int) -> None:
    settings = Settings(_env_file=None, gateway_admin_token="t0k3n")  # type: ignore[call-arg]
    async with serve_gateway(service_yaml({"svc": [1]}), settings=settings) as gw:
        raw = await raw_request(gw.port, head + b"X-Request-ID: " + RID + b"\r\n\r\n")
    got, headers, body = parse_response(raw)
    assert got == status, raw
    names = dict(headers)
    assert names[b"content-type"] == b"application/json"
    assert names[b"cache-control"] == b"no-store"
    assert names[b"x-request-id"] == RID
    assert int(names[b"content-length"]) == len(body)
    doc = orjson.loads(body)
    assert set(doc) == {"error", "detail", "request_id"} and doc["request_id"] == RID.decode()
