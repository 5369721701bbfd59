"""Merging the workers' expositions: counters and histograms add up, gauges by their rule, the dead count on."""

from __future__ import annotations

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from msa_gateway.observability.metrics import Metrics
from msa_gateway.workers import merge


def exposition(requests: int, in_flight: int, up: int, seconds: float = 0.01) -> list[Metric]:
    """Return the parsed exposition of a worker that answered ``requests`` requests."""
    m = Metrics()
    for _ in range(requests):
        m.requests.count("svc", "GET", 200)
        m.requests.histogram("svc").observe(seconds)
    m.requests.in_flight = in_flight
    m.instance_up.labels("svc", "127.0.0.1:1").set(up)
    m.upstream_errors.labels("svc", "connect").inc(requests)
    return merge.parse(m.render().decode())


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return every sample of an exposition by name and labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text.decode())
        for s in fam.samples
    }


def test_counters_and_histograms_are_summed_and_shared_gauges_are_not() -> None:
    out = samples(merge.render(merge.merge([exposition(3, 1, 1), exposition(4, 2, 1)])))
    labels = (("code", "200"), ("method", "GET"), ("service", "svc"))
    assert out[("gateway_requests_total", labels)] == 7
    assert out[("gateway_request_duration_seconds_count", (("service", "svc"),))] == 7
    assert out[("gateway_request_duration_seconds_bucket", (("le", "0.01"), ("service", "svc")))] == 7
    assert out[("gateway_upstream_errors_total", (("kind", "connect"), ("service", "svc")))] == 7
    assert out[("gateway_requests_in_flight", ())] == 3  # per process: summed
    assert out[("gateway_instance_up", (("instance", "127.0.0.1:1"), ("service", "svc")))] == 1  # shared: max


def test_created_timestamps_keep_the_earliest() -> None:
    first, second = exposition(1, 0, 1), exposition(1, 0, 1)
    created = [
        s.value for f in first + second for s in f.samples if s.name == "gateway_upstream_errors_created"
    ]
    out = samples(merge.render(merge.merge([first, second])))
    assert out[("gateway_upstream_errors_created", (("kind", "connect"), ("service", "svc")))] == min(created)


def test_a_dead_workers_last_counts_stay_in_the_totals_but_its_gauges_do_not() -> None:
    retired = merge.Retired()
    retired.add(exposition(5, 9, 0))
    out = samples(merge.render(merge.merge([exposition(2, 1, 1)], retired)))
    labels = (("code", "200"), ("method", "GET"), ("service", "svc"))
    assert out[("gateway_requests_total", labels)] == 7
    assert out[("gateway_requests_in_flight", ())] == 1
    assert retired.requests == 5


def test_requests_total_sums_every_label_set() -> None:
    m = Metrics()
    m.requests.count("svc", "GET", 200)
    m.requests.count("unknown", "POST", 404)
    assert merge.requests_total(merge.parse(m.render().decode())) == 2


def test_openmetrics_exemplars_survive_the_merge_and_the_newest_wins() -> None:
    workers = []
    for trace, stamp in (("a" * 32, 1000.0), ("b" * 32, 2000.0), ("c" * 32, 1500.0)):
        m = Metrics()
        hist = m.requests.histogram("svc")
        hist.observe(0.004)
        hist.exemplars[2] = (trace, 0.004, stamp)  # bucket le=0.005, with a known timestamp
        workers.append(merge.parse(m.render(openmetrics=True).decode(), openmetrics=True))
    om = merge.render(merge.merge(workers), openmetrics=True).decode()
    assert 'le="0.005",service="svc"} 3.0 # {trace_id="' + "b" * 32 + '"} 0.004 2000.0' in om
    assert "a" * 32 not in om and "c" * 32 not in om
    assert "trace_id" not in merge.render(merge.merge(workers)).decode()
