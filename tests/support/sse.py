"""Read server-sent events from an aiohttp response, with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson


@dataclass(frozen=True)
class Event:
    """One server-sent event: its fields as sent (``data`` decoded from JSON when present)."""

    fields: dict[str, str]
    raw: bytes

    @property
    def id(self) -> int:
        """Return the ``id:`` field as a number."""
        return int(self.fields["id"])

    @property
    def data(self) -> Any:
        """Return the ``data:`` field decoded from JSON."""
        return orjson.loads(self.fields["data"])


async def next_event(resp: aiohttp.ClientResponse, timeout: float = 5.0) -> Event:
    """Return the next event (a block of ``field: value`` lines ended by a blank line)."""

    async def read() -> Event:
        fields: dict[str, str] = {}
        raw = b""
        while True:
            line = await resp.content.readline()
            if not line:
                raise EOFError("the event stream ended")
            raw += line
            text = line.decode().rstrip("\n")
            if not text:
                if fields:
                    return Event(fields, raw)
                continue
            name, _, value = text.partition(":")
            fields[name] = value.removeprefix(" ")

    return await asyncio.wait_for(read(), timeout)


async def event_where(
    resp: aiohttp.ClientResponse, predicate: Callable[[Any], bool], timeout: float = 10.0
) -> Event:
    """Return the first event whose decoded ``data`` satisfies ``predicate`` within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError("no event matched before the deadline")
        event = await next_event(resp, remaining)
        if "data" in event.fields and predicate(event.data):
            return event
