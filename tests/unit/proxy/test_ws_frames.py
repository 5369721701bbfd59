"""The frame cursor finds frame ends in any chunking; close frames are well formed both ways."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msa_gateway.proxy.ws_frames import FrameCursor, close_frame
from msa_gateway.ws_upgrade import response_bytes


def _frame(opcode: int, payload: bytes, masked: bool) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, (0x80 if masked else 0) | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, (0x80 if masked else 0) | 126)) + struct.pack("!H", n)
    else:
        head = bytes((0x80 | opcode, (0x80 if masked else 0) | 127)) + struct.pack("!Q", n)
    return head + (os.urandom(4) if masked else b"") + payload


@given(
    sizes=st.lists(st.sampled_from([0, 1, 125, 126, 127, 300, 65535, 65536, 70000]), min_size=1, max_size=6),
    masked=st.booleans(),
    cuts=st.lists(st.integers(min_value=1, max_value=9000), max_size=30),
)
def test_boundary_is_found_whatever_the_chunks(sizes: list[int], masked: bool, cuts: list[int]) -> None:
    frames = [_frame(0x2, b"\x88" * n, masked) for n in sizes]  # payload bytes that look like a close
    stream = b"".join(frames)
    ends = {sum(len(f) for f in frames[: k + 1]) for k in range(len(frames))}
    cursor = FrameCursor()
    i = 0
    for cut in cuts:
        if i + cut >= len(stream):
            break
        cursor.feed(stream[i : i + cut])
        i += cut
        assert cursor.at_boundary == (i in ends)
    cursor.feed(stream[i:])
    assert cursor.at_boundary and not cursor.saw_close


def test_mid_frame_is_not_a_boundary_and_a_close_is_seen() -> None:
    cursor = FrameCursor()
    frame = _frame(0x1, b"hello", masked=True)
    cursor.feed(frame[:3])
    assert not cursor.at_boundary
    cursor.feed(frame[3:])
    assert cursor.at_boundary
    cursor.feed(_frame(0x8, struct.pack("!H", 1000), masked=True))
    assert cursor.saw_close and cursor.at_boundary


@pytest.mark.parametrize("masked", [False, True])
def test_close_frame_carries_code_and_reason(masked: bool) -> None:
    frame = close_frame(1014, "the instance went away", masked=masked)
    assert frame[0] == 0x88 and bool(frame[1] & 0x80) == masked
    n = frame[1] & 0x7F
    payload = frame[-n:]
    if masked:
        mask = frame[2:6]
        payload = bytes(b ^ mask[k % 4] for k, b in enumerate(payload))
    assert struct.unpack("!H", payload[:2])[0] == 1014 and payload[2:] == b"the instance went away"


def test_refusal_response_has_its_length_and_closes() -> None:
    raw = response_bytes(
        403, [(b"x-a", b"1"), (b"content-length", b"99"), (b"connection", b"keep-alive")], b"no"
    )
    assert raw == b"HTTP/1.1 403 Forbidden\r\nx-a: 1\r\ncontent-length: 2\r\nconnection: close\r\n\r\nno"
    assert (
        response_bytes(101, [(b"connection", b"Upgrade")], b"")
        == b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\n\r\n"
    )
