"""Two shortcuts past ASGI for the proxy's commonest case, when the gateway's server serves it.

Most proxied answers arrive whole with their head (a small JSON body), and most request bodies
arrive with theirs. Through ASGI, an answer costs two message dicts, uvicorn's header loop (two
regular-expression searches per header) and two socket writes; reading a body that is already
there costs an ``asyncio.timeout`` armed and cancelled for nothing.

When ``send``/``receive`` are bound methods of a ``RequestCycle`` (request_cycle.py: uvicorn's
httptools cycle, compiled; uvicorn is pinned in pyproject.toml, and the tests run both cycles):

* ``write_whole`` writes status line, headers and body in one ``transport.write``, byte for byte
  what uvicorn's ``send`` would write for the two messages: lower-cased names, the same header
  checks, the same Content-Length or chunked framing, ``connection: close`` when the connection
  ends, and the same bookkeeping afterwards (response complete, the next pipelined request).
* ``body_waiting`` says whether ``receive`` will return at once (the body or a disconnect is
  there), so no idle timeout is needed for it; ``take_body`` takes a body part that is there as
  ``receive`` would, without its message; ``take_whole_body`` the whole body, when all of it is.

Anything else (another server, writes paused, a header that fails the checks, framing uvicorn
would refuse) returns False and the caller takes the ASGI path, which behaves as before.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE, STATUS_LINE

from msa_gateway.request_cycle import NO_BODY_STATUS, RequestCycle
from msa_gateway.write_batch import DIRECT, WriteBatch

# uvicorn's two header checks as translation tables that change exactly the bytes they refuse:
# ``bytes.translate`` returns its input unchanged when none is there, scanning several times faster
# than the regular expressions do (derived from them, so they agree).
_NAME_MAP = bytes(b ^ 1 if HEADER_RE.match(bytes([b])) else b for b in range(256))
_VALUE_MAP = bytes(b ^ 1 if HEADER_VALUE_RE.match(bytes([b])) else b for b in range(256))
_FRAMING = frozenset({b"transfer-encoding", b"connection"})


def _cycle(bound: Any) -> RequestCycle | None:
    """Return the cycle behind a bound ``send``/``receive``, or None."""
    cycle = getattr(bound, "__self__", None)
    return cycle if type(cycle) is RequestCycle else None


def body_waiting(receive: Any) -> bool:
    """Return whether ``receive()`` returns without waiting (a body part or a disconnect is there)."""
    cycle = _cycle(receive)
    return cycle is not None and cycle.message_event.is_set()


def take_body(receive: Any) -> tuple[bytes, bool] | None:
    """Return (body part, more follows) as ``receive()`` would, when it would return at once; else None.

    What uvicorn's ``receive`` does for a part that is there, without its coroutine, the event's
    ``wait`` coroutine and the message dict. None when the part is not there yet, the client left,
    the response is complete, or a ``100 Continue`` is owed first: then ``receive`` is the way.
    """
    cycle = _ready(receive)
    if cycle is None:
        return None
    return _take(cycle), cycle.more_body


def take_whole_body(receive: Any) -> bytes | None:
    """Return the whole body when all of it is there, as ``take_body`` would; else None, taking nothing."""
    cycle = _ready(receive)
    if cycle is None or cycle.more_body:
        return None
    return _take(cycle)


def _ready(receive: Any) -> RequestCycle | None:
    """Return the cycle behind ``receive`` when its next body part can be taken now."""
    cycle = _cycle(receive)
    if cycle is None or cycle.waiting_for_100_continue or cycle.disconnected or cycle.response_complete:
        return None
    return cycle if cycle.message_event.is_set() else None


def _take(cycle: RequestCycle) -> bytes:
    if cycle.flow.read_paused:  # read first: resume_reading is an interpreted call
        cycle.flow.resume_reading()
    cycle.message_event.clear()
    body = bytes(cycle.body)
    cycle.body = bytearray()
    return body


def _framing(cycle: RequestCycle, status: int, length: int, body: bytes) -> tuple[bytes, bytes] | None:
    """Return (extra head line, bytes after the head) as uvicorn frames them, or None if it would refuse.

    ``length`` is the Content-Length given, -1 when none was.
    """
    if cycle.scope["method"] == "HEAD":
        return b"", b""
    if length >= 0:
        return (b"", body) if length == len(body) else None
    if status in NO_BODY_STATUS:
        return None if body else (b"", b"")
    chunk = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    return b"transfer-encoding: chunked\r\n", chunk


def _writable(cycle: RequestCycle, status: int) -> bool:
    """Return whether nothing was written yet and uvicorn would write now without waiting."""
    idle = not (cycle.response_started or cycle.disconnected or cycle.flow.write_paused)
    return idle and not cycle.access_log and status in STATUS_LINE


def _lay_out(
    pairs: list[tuple[bytes, bytes]], out: list[bytes], names: list[bytes], values: list[bytes]
) -> None:
    """Append each header's line to ``out``, its name to ``names`` and its value to ``values``."""
    for name, value in pairs:
        names.append(name)
        values.append(value)
        out.append(name)
        out.append(b": ")
        out.append(value)
        out.append(b"\r\n")


def _response(
    cycle: RequestCycle, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> bytes | None:
    """Return the response's bytes as uvicorn writes them, or None when it would refuse or differ.

    One compiled loop lays the head out and gathers names and values; the checks then run once
    over all of them in C (a second Content-Length, a non-numeric one or a framing header leaves
    the answer to uvicorn). Names not lower-cased yet (the proxy's are) take a second pass.
    """
    out = [STATUS_LINE[status]]
    names: list[bytes] = []
    values: list[bytes] = []
    _lay_out(cycle.default_headers, out, names, values)
    _lay_out(headers, out, names, values)
    joined_names = b"".join(names)
    if joined_names.lower() != joined_names:
        lowered = [(name.lower(), value) for name, value in headers]
        return None if lowered == list(headers) else _response(cycle, status, lowered, body)
    if not _FRAMING.isdisjoint(names) or names.count(b"content-length") > 1:
        return None
    length = -1
    if b"content-length" in names:
        given = values[names.index(b"content-length")]
        if not given.isdigit():
            return None
        length = int(given)
    joined_values = b"".join(values)
    if (
        joined_names.translate(_NAME_MAP) != joined_names
        or joined_values.translate(_VALUE_MAP) != joined_values
    ):
        return None
    framed = _framing(cycle, status, length, body)
    if framed is None:
        return None
    if not cycle.keep_alive:
        out.append(b"connection: close\r\n")
    out.append(framed[0])
    out.append(b"\r\n")
    out.append(framed[1])
    return b"".join(out)


def write_whole(
    send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes, writes: WriteBatch = DIRECT
) -> bool:
    """Write a complete response in one write, as uvicorn would for start + final body; or return False.

    On a connection kept alive the write goes through ``writes`` (``write_batch``); one that
    closes after it is written at once, ahead of the close.
    """
    cycle = _cycle(send)
    if cycle is None or not _writable(cycle, status):
        return False
    data = _response(cycle, status, headers, body)
    if data is None:
        return False
    cycle.response_started = cycle.response_complete = True
    cycle.waiting_for_100_continue = False
    if cycle.keep_alive:
        writes.write(cycle.transport, data)
    else:
        cycle.transport.write(data)
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()
    return True


def abort(send: Any) -> None:
    """Close the connection of a response that cannot be completed (the client must not take it as whole).

    Under uvicorn's cycle the transport is closed here; under another server, returning without
    completing the response makes the server close it.
    """
    cycle = _cycle(send)
    if cycle is not None and not cycle.response_complete:
        cycle.transport.close()
