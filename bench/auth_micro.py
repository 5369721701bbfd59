"""Microbenchmark of the authentication stages alone: CPU µs per stage call, no sockets, no event loop.

    .venv/bin/python -m bench.auth_micro [--number 20000] [--repeat 5]

Each call builds a ``ProxyRequest`` (as the handler does) and drives the stage's coroutine to
its end by hand (a stage with static keys never awaits); the cost of building the request alone
is measured the same way and subtracted. Figures are the best of ``--repeat`` rounds, in µs.
This is a supplement to ``bench.run`` variants (whole-process CPU per request), not a substitute.
"""

from __future__ import annotations

import argparse
import time
import timeit
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from msa_gateway.policies import api_key, jwt_config
from msa_gateway.policies.jwt_auth import JwtAuth, TokenCache
from msa_gateway.proxy.request import ProxyRequest

API_KEY = "bench-api-key-0123456789abcdef"
BASE_HEADERS = [
    (b"host", b"127.0.0.1:8080"),
    (b"user-agent", b"wrk"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip"),
]


async def _receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}


async def _send(message: dict[str, Any]) -> None:
    del message


def _request(headers: list[tuple[bytes, bytes]]) -> ProxyRequest:
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/bench/anything",
        "raw_path": b"/bench/anything",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
    }
    return ProxyRequest(scope, _receive, _send)


def _drive(coro: Coroutine[Any, Any, Any]) -> None:
    try:
        coro.send(None)
    except StopIteration:
        return
    raise RuntimeError("the stage awaited: not measurable without a loop")


def _per_call_us(fn: Callable[[], None], number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def _build_only() -> None:
    _request(list(BASE_HEADERS))


def _caller(stage: Any, headers: list[tuple[bytes, bytes]]) -> Callable[[], None]:
    return lambda: _drive(stage(_request(list(headers))))


def stages() -> dict[str, tuple[Any, list[tuple[bytes, bytes]]]]:
    """Return each measured stage with the headers its requests carry."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    token = jwt.encode(
        {"sub": "bench", "iss": "https://idp.bench/", "aud": "bench", "exp": now + 3600, "iat": now},
        private,
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    key_config = api_key.parse({"keys": [{"consumer": "bench", "sha256": api_key.digest(API_KEY).hex()}]})
    block = {
        "algorithms": ["RS256"],
        "keys": [{"kid": "k1", "pem": pem.decode()}],
        "issuer": "https://idp.bench/",
        "audience": "bench",
        "claims_to_headers": {"sub": "X-User-ID"},
    }
    config = jwt_config.parse(block)
    bearer = [*BASE_HEADERS, (b"authorization", f"Bearer {token}".encode())]
    return {
        "api_key": (api_key.ApiKeyAuth(key_config), [*BASE_HEADERS, (b"x-api-key", API_KEY.encode())]),
        "jwt_rs256": (JwtAuth(config, None, None, time.time), bearer),
        "jwt_rs256_cached": (JwtAuth(config, None, TokenCache(10_000), time.time), bearer),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Print µs per call of each stage, net of building the request."""
    p = argparse.ArgumentParser(prog="python -m bench.auth_micro", description=__doc__)
    p.add_argument("--number", type=int, default=20_000)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    base = _per_call_us(_build_only, args.number, args.repeat)
    print(f"ProxyRequest alone: {base:.2f} us (subtracted below)")
    for name, (stage, headers) in stages().items():
        _drive(stage(_request(list(headers))))  # warm: fills the token cache
        number = args.number if "rs256" not in name or "cached" in name else max(1, args.number // 20)
        total = _per_call_us(_caller(stage, headers), number, args.repeat)
        print(f"{name:18s} {total - base:8.2f} us per call")


if __name__ == "__main__":
    main()
