"""A TCP relay on a loopback port that a test can cut and restore: the gateway cut off from a registry.

While cut, the port refuses connections and every relayed connection is closed, so the gateway
sees its registry as unreachable while the registry itself keeps running (leases expire in it).
"""

from __future__ import annotations

import asyncio
import contextlib

from tests.support.procs import free_port


class Relay:
    """Forward 127.0.0.1:``port`` to ``target_port``; ``cut()`` and ``restore()`` the link."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        """Return ``http://127.0.0.1:{port}``."""
        return f"http://127.0.0.1:{self.port}"

    async def restore(self) -> None:
        """Listen (again) on the relay's port."""
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Stop listening and close every relayed connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()
        self._writers.discard(writer)
