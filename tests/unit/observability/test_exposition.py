"""The sliced exposition: same samples as prometheus-client writes, exemplars only in OpenMetrics, idle services absent."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable

import pytest
from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.utils import floatToGoString

from msa_gateway.observability import exposition
from msa_gateway.observability.exposition import wants_openmetrics
from msa_gateway.observability.metrics import Metrics
from msa_gateway.observability.tracing import Tracer
from msa_gateway.workers import merge

SAMPLED = Tracer().start(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None)
UNSAMPLED = Tracer().start(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", None)
REFERENCE_NUMBER: Callable[[float], str] = floatToGoString
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def busy_metrics() -> Metrics:
    """Return metrics with a little of everything: requests, a histogram, labelled counters, gauges."""
    m = Metrics()
    m.requests.histogram("idle")  # registered, never used
    for code in (200, 503):
        m.requests.count("svc", "GET", code)
    m.requests.histogram("svc").observe(0.004, SAMPLED)
    m.requests.histogram("svc").observe(0.3)
    m.upstream_errors.labels("svc", "connect").inc()
    m.instance_up.labels("svc", "127.0.0.1:1").set(1)
    m.instance_up.labels("svc", 'odd"host\\:2').set(0)
    m.registry_services.set(2)
    return m


def samples(families: Iterable[Metric]) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_the_sliced_exposition_holds_the_same_samples_as_prometheus_client_writes(openmetrics: bool) -> None:
    m = busy_metrics()
    reference = (generate_openmetrics if openmetrics else generate_latest)(m.registry).decode()
    ours = m.render(openmetrics).decode()
    assert samples(merge.parse(ours, openmetrics)) == samples(merge.parse(reference, openmetrics))
    assert ours.endswith("# EOF\n") == openmetrics


def test_a_service_without_requests_has_no_series_until_its_first_request() -> None:
    m = Metrics()
    m.requests.histogram("idle")
    assert 'service="idle"' not in m.render().decode()
    m.requests.histogram("idle").observe(0.01)
    m.requests.count("idle", "GET", 200)
    text = m.render().decode()
    assert 'gateway_request_duration_seconds_count{service="idle"} 1.0' in text
    assert 'gateway_requests_total{code="200",method="GET",service="idle"} 1.0' in text


def test_a_sampled_trace_is_the_exemplar_of_its_bucket_in_openmetrics_only() -> None:
    m = busy_metrics()
    families = {f.name: f for f in merge.parse(m.render(openmetrics=True).decode(), openmetrics=True)}
    exemplars = {
        s.labels["le"]: s.exemplar for s in families["gateway_request_duration_seconds"].samples if s.exemplar
    }
    assert list(exemplars) == ["0.005"]  # 0.004 s falls in le=0.005; the unsampled 0.3 s left none
    assert exemplars["0.005"].labels == {"trace_id": SAMPLED.trace_id.decode()}
    assert exemplars["0.005"].value == 0.004 and exemplars["0.005"].timestamp is not None
    assert " # {" not in m.render().decode()


def test_an_unsampled_trace_leaves_the_previous_exemplar_in_place() -> None:
    m = Metrics()
    hist = m.requests.histogram("svc")
    hist.observe(0.004, SAMPLED)
    hist.observe(0.0041, UNSAMPLED)
    text = m.render(openmetrics=True).decode()
    assert SAMPLED.trace_id.decode() in text and UNSAMPLED.trace_id.decode() not in text


def test_per_instance_series_can_be_turned_off_and_service_gauges_stay() -> None:
    routes = {"svc": type("Route", (), {"instances": (1, 2, 3), "eligible": (1,)})()}
    for per_instance in (True, False):
        m = Metrics(per_instance=per_instance)
        m.track_services(lambda: routes)
        m.instance_up.labels("svc", "127.0.0.1:1").set(1)
        found = samples(merge.parse(m.render().decode()))
        assert (
            ("gateway_instance_up", (("instance", "127.0.0.1:1"), ("service", "svc"))) in found
        ) == per_instance
        assert found[("gateway_service_instances", (("service", "svc"),))] == 3
        assert found[("gateway_service_healthy_instances", (("service", "svc"),))] == 1


def many_services(count: int) -> Metrics:
    m = Metrics()
    for i in range(count):
        m.requests.histogram(f"s{i}").observe(0.002)
        m.requests.count(f"s{i}", "GET", 200)
    return m


def test_pieces_break_between_series_and_a_series_read_late_is_still_consistent() -> None:
    m = many_services(50)
    clock = itertools.count()  # every reading is a "second" later: each chunk becomes its own piece
    pieces = exposition.pieces(
        m.registry.collectors, False, slice_seconds=0.5, clock=lambda: float(next(clock))
    )
    out = [next(pieces)]
    m.requests.histogram("s49").observe(7.0)  # traffic between two pieces of the same scrape
    out.extend(pieces)
    assert len(out) > 50
    assert b"".join(out) == m.render()  # the scrape reached s49 after the new request: it shows it
    text = b"".join(out).decode()
    found = samples(merge.parse(text))
    for i in range(50):
        labels = (("le", "+Inf"), ("service", f"s{i}"))
        assert (
            found[("gateway_request_duration_seconds_bucket", labels)]
            == found[("gateway_request_duration_seconds_count", (("service", f"s{i}"),))]
        )
    assert found[("gateway_request_duration_seconds_count", (("service", "s49"),))] == 2


async def test_the_stream_gives_the_event_loop_back_between_pieces() -> None:
    m = many_services(3000)
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    pieces = [piece async for piece in m.stream()]
    done.set()
    await task
    assert len(pieces) > 1 and ticks >= len(pieces) - 1
    assert b"".join(pieces) == m.render()


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, False),
        ("text/plain;version=0.0.4", False),
        ("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;q=0.3,*/*;q=0.2", True),
        ("*/*", False),
        ("application/openmetrics-text", True),
    ],
)
def test_openmetrics_is_chosen_from_the_accept_header(accept: str | None, expected: bool) -> None:
    assert wants_openmetrics(accept) is expected


@pytest.mark.parametrize(
    "value",
    [
        0,
        1,
        -1,
        7,
        999_999,
        1_000_000,
        123_456_789,
        -5_000_000,
        True,
        0.0,
        -0.0,
        1.0,
        0.0025,
        1e-05,
        123456.7,
        999_999.9,
        1e6,
        1.5e7,
        1764820000.123,
        -2.5e9,
        float("inf"),
        float("-inf"),
        float("nan"),
    ],
)
def test_numbers_are_written_exactly_as_prometheus_client_writes_them(value: float) -> None:
    assert exposition.go_float(value) == REFERENCE_NUMBER(value)
