"""W3C Trace Context by hand at the edges of a request: parse, start, propagate, sample.

OpenTelemetry's automatic ASGI instrumentation costs about 100 µs a request, more than the
whole proxy hop, so the gateway makes its few ids itself: one server span per proxied request
and one child span per upstream attempt. A valid ``traceparent`` from the client is continued
(its sampled flag decides, as a parent-based sampler does); a malformed one is replaced and
never echoed. ``tracestate`` is passed on only when it is well formed (at most 32 members,
512 bytes). Spans of sampled requests go to an ``Exporter`` (``observability/otlp.py``), off
the request path.
"""

from __future__ import annotations

import random
import re
import struct
from dataclasses import dataclass
from itertools import repeat

_TRACEPARENT = re.compile(rb"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_TRACESTATE_MEMBER = re.compile(
    rb"^\s*(?:[a-z0-9][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
    rb"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]\s*$"
)
ZERO_TRACE = b"0" * 32
ZERO_SPAN = b"0" * 16
MAX_TRACESTATE = 512
MAX_TRACESTATE_MEMBERS = 32
SAMPLED = 0x01


@dataclass(frozen=True, slots=True)
class Parent:
    """A valid incoming ``traceparent``."""

    trace_id: bytes
    span_id: bytes
    flags: int


def parse_traceparent(value: bytes | None) -> Parent | None:
    """Return the parent a ``traceparent`` value names, or None when it is absent or malformed."""
    if value is None or len(value) < 55:
        return None
    m = _TRACEPARENT.match(value.strip())
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == b"ff" or (version == b"00" and rest) or trace_id == ZERO_TRACE or span_id == ZERO_SPAN:
        return None
    return Parent(trace_id, span_id, int(flags, 16))


def valid_tracestate(value: bytes | None) -> bytes | None:
    """Return ``value`` when it is a well-formed ``tracestate``, else None (it is then dropped)."""
    if not value or len(value) > MAX_TRACESTATE:
        return None
    members = [m for m in value.split(b",") if m.strip()]
    if len(members) > MAX_TRACESTATE_MEMBERS or not all(_TRACESTATE_MEMBER.match(m) for m in members):
        return None
    keys = [m.split(b"=", 1)[0].strip() for m in members]
    return value if len(set(keys)) == len(keys) else None


class Trace:
    """The trace one request belongs to: its id, the gateway's server span and the sampling decision.

    ``spare`` is a span id drawn with the trace for its first upstream attempt, ``first`` that
    attempt's ``traceparent`` made in the batch (None when not made: a continued trace); which
    attempt is first, the request's ``Attempts`` knows. ``trace_text`` is the trace id as
    ``str``, for the access line. Slots, not a tuple: its fields are read on every request, and
    a slot is read several times faster than a named tuple's field.
    """

    __slots__ = ("first", "parent_id", "sampled", "span_id", "spare", "trace_id", "trace_text", "tracestate")

    def __init__(  # noqa: PLR0913 - the fields (new traces are made in batches: Tracer._draw)
        self,
        trace_id: bytes,
        span_id: bytes,
        parent_id: bytes | None,
        sampled: bool,
        tracestate: bytes | None,
        spare: bytes,
        first: bytes | None = None,
    ) -> None:
        self.trace_id = trace_id
        self.trace_text = trace_id.decode()
        self.span_id = span_id
        self.parent_id = parent_id
        self.sampled = sampled
        self.tracestate = tracestate
        self.spare = spare
        self.first = first

    def child(self, span_id: bytes) -> bytes:
        """Return the ``traceparent`` to send upstream for a child span ``span_id``."""
        return b"-".join((b"00", self.trace_id, span_id, _FLAGS[self.sampled]))


_FLAGS = (b"00", b"01")  # indexed by the sampled flag
# New traces drawn at once: one random draw, hex conversion and struct cut per batch, not per request.
BATCH = 64
_ZERO_TEXT = "0" * 16
_CUT = struct.Struct("32s16s16s" * BATCH)  # a trace id, its span id and spare span id, in hex
_LOW = struct.Struct(">" + "8xQ16x" * BATCH)  # each trace id's low 64 bits, from the random bytes


class Tracer:
    """Starts or continues traces; one per runtime.

    ``ratio`` samples new traces; with ``follow_parent`` (the ``parentbased_*`` samplers) a
    valid parent's sampled flag decides instead, else the ratio decides for every trace.
    """

    __slots__ = ("_all", "_bound", "_fresh", "_rng", "follow_parent", "ratio")

    def __init__(
        self, ratio: float = 1.0, rng: random.Random | None = None, *, follow_parent: bool = True
    ) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError("the sampling ratio must be between 0 and 1")
        self.ratio = ratio
        self.follow_parent = follow_parent
        self._bound = int(ratio * (1 << 64))
        self._all = ratio == 1.0  # every new trace is sampled: no comparison to make
        self._rng = rng or random.SystemRandom()  # os.urandom: a batch's bytes in one call
        self._fresh: list[Trace] = []

    @classmethod
    def from_sampler(cls, sampler: str, arg: float) -> Tracer:
        """Return a tracer for an ``OTEL_TRACES_SAMPLER`` name and its ``OTEL_TRACES_SAMPLER_ARG``."""
        base = sampler.removeprefix("parentbased_")
        ratio = {"always_on": 1.0, "always_off": 0.0}.get(base, arg)
        return cls(ratio, follow_parent=sampler.startswith("parentbased_"))

    def span_id(self) -> bytes:
        """Return a new non-zero 16-hex-digit span id."""
        return b"%016x" % (self._rng.getrandbits(64) or 1)

    def start(self, traceparent: bytes | None, tracestate: bytes | None) -> Trace:
        """Continue the client's trace when its ``traceparent`` is valid, else start a new one."""
        trace = (self._fresh or self._draw()).pop()
        if traceparent is not None:
            parent = parse_traceparent(traceparent)
            if parent is not None:
                return self._continued(trace, parent, valid_tracestate(tracestate))
        return trace

    def _continued(self, trace: Trace, parent: Parent, tracestate: bytes | None) -> Trace:
        """Return ``trace``'s drawn span ids in the client's trace, as a child of the client's span.

        A ``parentbased_*`` sampler follows the parent's sampled flag; the others decide by ratio
        on the client's trace id, as for a new trace.
        """
        trace_id = parent.trace_id
        follow = self.follow_parent
        sampled = bool(parent.flags & SAMPLED) if follow else int(trace_id[16:], 16) < self._bound
        # the first attempt's traceparent is made when it is sent, with the client's trace id
        return Trace(trace_id, trace.span_id, parent.span_id, sampled, tracestate, trace.spare)

    def _draw(self) -> list[Trace]:
        """Draw ``BATCH`` new traces' ids at once: one random draw, hex conversion and cut per batch.

        Trace ids are sampled on their low 64 bits, as OpenTelemetry's TraceIdRatioBased does.
        """
        while True:  # an all-zero id is invalid: draw again (1 in 10^16 per batch)
            raw = self._rng.randbytes(32 * BATCH)
            text = raw.hex()
            if text.find(_ZERO_TEXT) < 0:
                break
        ids = _CUT.unpack(text.encode())
        trace_ids, own, spare = ids[0::3], ids[1::3], ids[2::3]
        if self._all or self._bound == 0:
            sampled: list[bool] = [self._all] * BATCH
        else:
            sampled = list(map(self._bound.__gt__, _LOW.unpack(raw)))
        first = map(b"-".join, zip(repeat(b"00"), trace_ids, spare, map(_FLAGS.__getitem__, sampled)))
        fresh = []
        for trace_id, span_id, ratio_sampled, spare_id, traceparent in zip(
            trace_ids, own, sampled, spare, first, strict=True
        ):
            fresh.append(Trace(trace_id, span_id, None, ratio_sampled, None, spare_id, traceparent))
        self._fresh = fresh
        return self._fresh
