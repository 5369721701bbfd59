"""The pure parts of bench/scale_metrics.py: the registry it builds and how it summarises latencies."""

from __future__ import annotations

from bench.scale_metrics import Latencies, registry


def test_the_registry_has_every_service_with_1_to_10_instances_and_no_active_checks() -> None:
    ports = list(range(9000, 9010))
    services = registry(300, ports)["services"]
    assert len(services) == 300
    sizes = {len(svc["instances"]) for svc in services.values()}
    assert min(sizes) == 1 and max(sizes) == 10
    assert all(svc["health_check"] == {"path": None} for svc in services.values())
    assert registry(300, ports) == registry(300, ports)  # the same registry every run


def test_the_latency_row_counts_requests_over_20_ms_and_phases_add_up() -> None:
    both = Latencies(((0.0, 1.0), (1.0, 2.0), (2.0, 25.0)), 1) + Latencies(((3.0, 30.0),), 0)
    row = both.row()
    assert row.startswith("4 requests, 1 failed") and "max 30.0 ms" in row and row.endswith("over 20 ms: 2")


def test_only_requests_in_flight_during_a_scrape_overlap_it() -> None:
    # (start s, ms): ends before, straddles the start, inside, straddles the end, after, spans two scrapes
    requests = Latencies(
        ((0.0, 500.0), (0.9, 200.0), (1.2, 10.0), (1.9, 300.0), (2.5, 100.0), (4.5, 2000.0)), 0
    )
    inside = requests.overlapping([(1.0, 2.0), (5.0, 5.5), (6.0, 6.2)])
    assert [start for start, _ in inside.samples] == [0.9, 1.2, 1.9, 4.5]
