"""Many cheap backends in one process: ``python -m bench.probe_backend --ports 8100-8119 | --count 16``.

Every port answers any request with ``200 ok`` and closes the connection (``Connection: close``),
from a bare asyncio protocol, so thousands of probes a second cost this process little and
the figures of the scale scenario are the gateway's. ``GET /__stats`` answers the requests
seen so far as JSON: ``{"health": n, "other": n}`` (``health``: paths starting ``/health``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Callable
from typing import cast

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


class Counts:
    """Requests seen, by kind."""

    def __init__(self) -> None:
        self.health = 0
        self.other = 0


class _Answer(asyncio.Protocol):
    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" not in self.buf or self.transport is None:
            return
        target = self.buf.split(b" ", 2)[1] if self.buf.count(b" ") >= 2 else b"/"
        if target == b"/__stats":
            body = json.dumps({"health": self.counts.health, "other": self.counts.other}).encode()
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            self.transport.write(head.encode() + body)
        else:
            if target.startswith(b"/health"):
                self.counts.health += 1
            else:
                self.counts.other += 1
            self.transport.write(OK)
        self.transport.close()


def parse_ports(spec: str) -> list[int]:
    """Return the ports of ``A-B`` (inclusive) or ``A,B,C``."""
    if "-" in spec:
        low, high = (int(p) for p in spec.split("-", 1))
        return list(range(low, high + 1))
    return [int(p) for p in spec.split(",")]


async def serve(ports: list[int], host: str = "127.0.0.1") -> None:
    """Answer on every port (0: any free one) until SIGTERM/SIGINT; print the ports as a JSON line."""
    loop = asyncio.get_running_loop()
    counts = Counts()
    servers = [
        await loop.create_server(lambda: _Answer(counts), host, port, backlog=4096, reuse_address=True)
        for port in ports
    ]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = [server.sockets[0].getsockname()[1] for server in servers]
    print(json.dumps({"ports": bound}), flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> None:
    """Parse the arguments and serve (on uvloop when installed)."""
    parser = argparse.ArgumentParser(description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--ports", help="A-B or A,B,C")
    group.add_argument("--count", type=int, help="this many ports the kernel picks")
    args = parser.parse_args()
    ports = parse_ports(args.ports) if args.ports else [0] * args.count
    factory: Callable[[], asyncio.AbstractEventLoop]
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(ports))


if __name__ == "__main__":
    main()
