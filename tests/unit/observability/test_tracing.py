"""W3C Trace Context: what is continued, what is replaced, how new traces are sampled."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msa_gateway.observability.tracing import BATCH, Tracer, parse_traceparent, valid_tracestate

GOOD = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_is_continued_with_a_new_span_and_its_sampled_flag() -> None:
    trace = Tracer(ratio=0.0).start(GOOD, b"congo=t61rcWkgMzE")
    assert trace.trace_id == b"4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace.parent_id == b"00f067aa0ba902b7" and trace.span_id != trace.parent_id
    assert trace.sampled  # the parent decided, whatever the ratio
    assert trace.tracestate == b"congo=t61rcWkgMzE"
    child = trace.child(b"1111111111111111")
    assert child == b"00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01"
    assert parse_traceparent(child) is not None


def test_an_unsampled_parent_stays_unsampled() -> None:
    trace = Tracer(ratio=1.0).start(GOOD[:-2] + b"00", None)
    assert not trace.sampled and trace.child(b"1" * 16).endswith(b"-00")


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"garbage",
        GOOD.upper(),  # hex must be lower case
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        GOOD + b"-extra",  # version 00 has exactly four fields
        b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
    ],
)
def test_a_malformed_traceparent_starts_a_new_trace_and_is_never_echoed(value: bytes) -> None:
    trace = Tracer().start(value, b"a=b")
    assert trace.parent_id is None and trace.tracestate is None
    assert trace.trace_id not in value and len(trace.trace_id) == 32


def test_a_future_version_with_more_fields_is_continued() -> None:
    assert parse_traceparent(b"01" + GOOD[2:] + b"-what-comes-next") is not None


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", True),
        (b"tenant@vendor=x", True),
        (b"a=1,a=2", False),  # duplicate key
        (b"UPPER=x", False),
        (b"k=" + b"v" * 300, False),
        (b",".join(b"k%d=v" % i for i in range(33)), False),
        (b"novalue", False),
    ],
)
def test_tracestate_is_passed_only_when_well_formed(value: bytes, ok: bool) -> None:
    assert (valid_tracestate(value) == value) is ok


def test_new_traces_are_sampled_at_the_ratio() -> None:
    tracer = Tracer(ratio=0.05, rng=random.Random(7))
    sampled = sum(tracer.start(None, None).sampled for _ in range(20_000))
    assert 800 <= sampled <= 1200  # 5% +- 1%


@pytest.mark.parametrize("ratio", [-0.1, 1.5])
def test_a_ratio_outside_0_1_is_refused(ratio: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        Tracer(ratio=ratio)


@given(st.binary(max_size=80))
def test_any_bytes_give_a_valid_trace(value: bytes) -> None:
    trace = Tracer().start(value, value)
    assert parse_traceparent(trace.child(Tracer().span_id())) is not None


def test_a_new_trace_has_three_distinct_ids() -> None:
    tracer = Tracer(rng=random.Random(3))
    trace = tracer.start(None, None)
    ids = [trace.trace_id, trace.span_id, trace.spare]
    assert [len(i) for i in ids] == [32, 16, 16] and len(set(ids)) == 3
    assert all(int(i, 16) for i in ids)  # valid hex, never all zero
    assert trace.parent_id is None and trace.tracestate is None
    second = tracer.span_id()
    assert second not in ids and len(second) == 16


def test_an_all_zero_draw_is_drawn_again() -> None:
    class Rigged(random.Random):
        draws = [bytes(32 * BATCH)]

        def randbytes(self, n: int) -> bytes:
            return self.draws.pop(0) if self.draws else super().randbytes(n)

    tracer = Tracer(rng=Rigged(1))
    traces = [tracer.start(None, None) for _ in range(BATCH)]
    assert not Rigged.draws  # the zero draw was made, and refused
    assert all(int(t.trace_id, 16) and int(t.span_id, 16) and t.spare and int(t.spare, 16) for t in traces)


def test_new_ids_are_drawn_in_batches_and_never_repeat() -> None:
    tracer = Tracer(rng=random.Random(5))
    traces = [tracer.start(None, None) for _ in range(3 * BATCH + 1)]
    ids = [i for t in traces for i in (t.trace_id, t.span_id, t.spare)]
    assert len(set(ids)) == len(ids)
    assert all(len(t.trace_id) == 32 and t.trace_text == t.trace_id.decode() for t in traces)


def test_a_new_traces_first_child_traceparent_is_made_with_it() -> None:
    trace = Tracer(ratio=0.0, rng=random.Random(9)).start(None, None)
    assert trace.spare is not None
    assert trace.first == trace.child(trace.spare) == b"00-%s-%s-00" % (trace.trace_id, trace.spare)


def test_a_continued_trace_has_no_ready_traceparent_but_a_spare_id() -> None:
    trace = Tracer(rng=random.Random(2)).start(GOOD, None)
    assert trace.first is None and len(trace.spare) == 16 and trace.spare != trace.span_id
    assert trace.trace_text == GOOD[3:35].decode()


@pytest.mark.parametrize(
    ("sampler", "parent_flag", "sampled"),
    [
        ("parentbased_traceidratio", b"01", True),
        ("parentbased_traceidratio", b"00", False),
        ("traceidratio", b"01", False),  # the ratio decides, not the parent: 0.1 and a high trace id
        ("always_on", b"00", True),
        ("always_off", b"01", False),
    ],
)
def test_only_parent_based_samplers_follow_the_clients_sampled_flag(
    sampler: str, parent_flag: bytes, sampled: bool
) -> None:
    high = b"00-4bf92f3577b34da6fa3ce929d0e0e473-00f067aa0ba902b7-" + parent_flag  # low 64 bits: 0xfa3c...
    assert Tracer.from_sampler(sampler, 0.1).start(high, None).sampled is sampled


def test_a_ratio_sampler_samples_a_continued_trace_whose_low_bits_fall_under_the_ratio() -> None:
    low = b"00-4bf92f3577b34da600000000000000a1-00f067aa0ba902b7-00"
    assert Tracer.from_sampler("traceidratio", 0.1).start(low, None).sampled


def test_a_new_trace_is_sampled_when_its_trace_ids_low_64_bits_fall_under_the_ratio() -> None:
    tracer = Tracer(ratio=0.3, rng=random.Random(11))
    traces = [tracer.start(None, None) for _ in range(2 * BATCH)]
    bound = int(0.3 * (1 << 64))
    assert all(t.sampled == (int(t.trace_id[16:], 16) < bound) for t in traces)
    assert all(t.first is not None and t.first.endswith(b"-01" if t.sampled else b"-00") for t in traces)
    assert 0 < sum(t.sampled for t in traces) < len(traces)
