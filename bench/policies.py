"""``python -m bench.policies``: CPU cost of policies and routes per request, inside one process.

The proxy handler runs against an in-memory upstream (no sockets), so what changes between two
variants is only the policy or routing work: ``cors`` minus ``none`` is what CORS adds to a simple
request (the issue's budget: 3 us). Variants are interleaved and the median of ``--rounds`` is
reported, so a neighbour's load skews them alike; ``time.process_time`` counts this process's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

from msa_gateway.model import Instance
from msa_gateway.observability.access import AccessLog
from msa_gateway.proxy.handler import ProxyApp
from msa_gateway.runtime import Runtime
from msa_gateway.settings import Settings, parse_config

ORIGIN = b"https://app.example.com"
CORS = {
    "allow_origins": ["https://app.example.com", "https://*.preview.example.com"],
    "allow_credentials": True,
}
HEADERS = {"request": {"set": {"X-Client-IP": "${client_ip}"}}, "response": {"remove": ["Server"]}}


class _Response:
    status = 200
    headers = ((b"content-type", b"application/json"), (b"content-length", b"11"))

    async def read(self) -> bytes:
        return b'{"ok":true}'

    def at_eof(self) -> bool:
        return True

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Upstream:
    name = "bench"

    async def send(self, *args: Any) -> _Response:
        return _Response()

    def retain(self, addresses: set[str]) -> None:
        pass

    async def aclose(self) -> None:
        pass


class _NullStream:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def variant(name: str) -> tuple[ProxyApp, str]:
    """Return the proxy for one variant and the path its requests use."""
    service: dict[str, Any] = {}
    data: dict[str, Any] = {"defaults": {"health_check": {"path": None}}, "services": {"svc": service}}
    path = "/svc/items/1"
    if name == "cors":
        service["policies"] = {"cors": CORS}
    elif name == "headers":
        service["policies"] = {"headers": HEADERS}
    elif name == "ip_rules":
        service["policies"] = {"ip_rules": {"allow": ["10.0.0.0/8"]}}
    elif name == "routes200":
        data["routes"] = [
            {"service": "svc", "path_prefix": f"/r{i}", "strip_prefix": True} for i in range(200)
        ]
        path = "/r150/items/1"
    rt = Runtime(
        Settings(_env_file=None),  # type: ignore[call-arg]
        parse_config(data, "bench.yaml"),
        upstream=_Upstream(),  # type: ignore[arg-type]
        access=AccessLog(stream=_NullStream()),  # type: ignore[arg-type]
    )
    rt.apply({"svc": (Instance("a", "127.0.0.1", 9001),)})
    return ProxyApp(rt), path


async def measure(app: ProxyApp, path: str, n: int) -> float:
    """Return CPU microseconds per request over ``n`` GETs with an Origin header."""
    headers = [(b"host", b"gw"), (b"user-agent", b"bench"), (b"accept", b"*/*"), (b"origin", ORIGIN)]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    raw = path.encode()
    started = time.process_time()
    for _ in range(n):
        scope = {
            "type": "http",
            "method": "GET",
            "path": path,
            "raw_path": raw,
            "query_string": b"",
            "headers": headers,
            "client": ("10.0.0.9", 5555),
            "scheme": "http",
        }
        await app(scope, receive, send)
    return (time.process_time() - started) / n * 1e6


async def main(argv: Sequence[str] | None = None) -> int:
    """Measure every variant ``--rounds`` times, interleaved; print medians and deltas over ``none``."""
    p = argparse.ArgumentParser(prog="python -m bench.policies")
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    names = ("none", "cors", "headers", "ip_rules", "routes200")
    apps = {name: variant(name) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    for app, path in apps.values():
        await measure(app, path, 2000)  # warm-up
    for _ in range(args.rounds):
        for name, (app, path) in apps.items():
            samples[name].append(await measure(app, path, args.requests))
    base = statistics.median(samples["none"])
    print(f"{'variant':<10} {'us/req':>8} {'added':>8}")
    for name in names:
        med = statistics.median(samples[name])
        print(f"{name:<10} {med:8.2f} {med - base:+8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
