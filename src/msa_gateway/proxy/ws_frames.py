"""Just enough of RFC 6455 framing to relay bytes: where frames end, whether a close went by, close frames.

The gateway relays a WebSocket's bytes untouched. To end a connection itself (idle timeout,
drain, an instance that vanished) it must put a close frame between two frames, never inside
one, so each direction keeps a ``FrameCursor``: fed every relayed chunk, it skips payloads by
their length and notes a close frame passing. Parsing the header of each frame is the only
per-byte cost; payloads are never looked at.
"""

from __future__ import annotations

import os
import struct

_OPCODE_CLOSE = 0x8


def _header(head: bytes) -> tuple[int, int, int] | None:
    """Return (header length, payload length, opcode) of the frame ``head`` starts with; None: incomplete."""
    if len(head) < 2:
        return None
    size = head[1] & 0x7F
    hlen = 2
    if size == 126:
        hlen = 4
        if len(head) < hlen:
            return None
        size = int.from_bytes(head[2:4], "big")
    elif size == 127:
        hlen = 10
        if len(head) < hlen:
            return None
        size = int.from_bytes(head[2:10], "big")
    if head[1] & 0x80:
        hlen += 4
    if len(head) < hlen:
        return None
    return hlen, size, head[0] & 0x0F


class FrameCursor:
    """Follow the frames of one direction of a relayed connection."""

    __slots__ = ("_head", "_left", "saw_close")

    def __init__(self) -> None:
        self._left = 0  # payload bytes of the current frame still to come
        self._head = b""  # the start of a frame header split across chunks
        self.saw_close = False

    @property
    def at_boundary(self) -> bool:
        """Return whether the bytes relayed so far end with a whole frame."""
        return not self._left and not self._head

    def feed(self, data: bytes) -> None:
        """Advance over ``data``, the next relayed chunk."""
        i, n = 0, len(data)
        while i < n:
            if self._left:
                take = min(self._left, n - i)
                self._left -= take
                i += take
                continue
            head = self._head + data[i : i + 14]  # a header is at most 14 bytes
            parsed = _header(head)
            if parsed is None:
                self._head = head
                return
            hlen, size, opcode = parsed
            i += hlen - len(self._head)
            self._head = b""
            self._left = size
            if opcode == _OPCODE_CLOSE:
                self.saw_close = True


def close_frame(code: int, reason: str, *, masked: bool) -> bytes:
    """Return a close frame: unmasked towards the client, masked towards the instance (RFC 6455 5.3)."""
    payload = struct.pack("!H", code) + reason.encode()[:123]
    if not masked:
        return bytes((0x88, len(payload))) + payload
    mask = os.urandom(4)
    body = bytes(b ^ mask[k % 4] for k, b in enumerate(payload))
    return bytes((0x88, 0x80 | len(payload))) + mask + body
