"""The supervisor-worker channel: one JSON object per line over a Unix socket.

Messages (``op``): ``hello`` (worker -> hub, once), ``health`` (a probe's resulting state),
``eject`` (a passive ejection, with the seconds it has left), ``scrape`` / ``scraped`` (a worker
asks for the merged metrics of all workers), ``collect`` / ``metrics`` (the hub asks one worker
for its own exposition). Nothing on this channel runs per proxied request.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

LIMIT = 64 * 1024 * 1024  # one exposition of a large registry fits in a line


async def read(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """Return the next message, or None when the other side closed the channel."""
    try:
        line = await reader.readline()
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        return None
    if not line:
        return None
    msg = orjson.loads(line)
    return msg if isinstance(msg, dict) else None


def write(writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
    """Queue ``msg`` (never blocks; a closed channel drops it)."""
    if not writer.is_closing():
        writer.write(orjson.dumps(msg) + b"\n")
