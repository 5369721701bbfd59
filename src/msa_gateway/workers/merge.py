"""Add the metrics of several worker processes up into one exposition (supervisor-side aggregation).

Each worker keeps its own numbers as plain Python values (the request path never coordinates
with another process); at scrape time the supervisor asks every worker for its exposition text
and merges it here. The rules, per sample:

* counters and histograms (buckets, ``_count``, ``_sum``) are summed; ``*_created`` takes the
  earliest value;
* gauges that count something per process (``SUMMED_GAUGES``: requests in flight, background
  tasks) are summed; every other gauge describes state the workers share (instance health,
  registry size, panic, discovery) and takes the highest value any worker reports;
* an OpenMetrics exemplar (a bucket's ``trace_id``) keeps the newest any worker reports;
* a worker that died keeps counting: its last scraped counters and histograms are folded into
  ``Retired`` and added to every later scrape, so a total never goes backwards when a worker is
  replaced (only what it counted after its last scrape is lost, as with a restarted process).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar

from msa_gateway.observability import exposition

SUMMED_GAUGES = frozenset({"gateway_requests_in_flight", "gateway_background_tasks"})
REQUESTS_SAMPLE = "gateway_requests_total"
SampleKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(slots=True)
class Family:
    """One metric family being merged: its header and the merged value of each sample."""

    name: str
    documentation: str
    type: str
    samples: dict[SampleKey, float] = field(default_factory=dict)
    exemplars: dict[SampleKey, Exemplar] = field(default_factory=dict)

    def add(self, key: SampleKey, value: float, exemplar: Exemplar | None = None) -> None:
        """Fold one worker's ``value`` of sample ``key`` in, by this family's rule."""
        if exemplar is not None:
            kept = self.exemplars.get(key)
            if kept is None or float(exemplar.timestamp or 0.0) > float(kept.timestamp or 0.0):
                self.exemplars[key] = exemplar
        old = self.samples.get(key)
        if old is None:
            self.samples[key] = value
        elif key[0].endswith("_created"):
            self.samples[key] = min(old, value)
        elif self.type == "gauge" and self.name not in SUMMED_GAUGES:
            self.samples[key] = max(old, value)
        else:
            self.samples[key] = old + value

    def metric(self) -> Metric:
        """Return the merged family as a prometheus-client metric."""
        out = Metric(self.name, self.documentation, self.type)
        for key, value in self.samples.items():
            out.add_sample(key[0], dict(key[1]), value, exemplar=self.exemplars.get(key))
        return out


def parse(text: str, openmetrics: bool = False) -> list[Metric]:
    """Parse one worker's exposition (Prometheus text, or OpenMetrics with its exemplars)."""
    return list((parse_openmetrics if openmetrics else text_string_to_metric_families)(text))


def _key(name: str, labels: dict[str, str]) -> SampleKey:
    return name, tuple(sorted(labels.items()))


def requests_total(families: Iterable[Metric]) -> float:
    """Return the sum of ``gateway_requests_total`` over every label set in ``families``."""
    return sum(s.value for f in families for s in f.samples if s.name == REQUESTS_SAMPLE)


class Retired:
    """The last counters and histograms of workers that died, kept so totals never go backwards."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}
        self.requests = 0.0

    def add(self, families: Iterable[Metric]) -> None:
        """Fold a dead worker's last scrape in (its gauges died with it)."""
        for fam in families:
            if fam.type not in ("counter", "histogram"):
                continue
            merged = self.families.setdefault(fam.name, Family(fam.name, fam.documentation, fam.type))
            for s in fam.samples:
                if not s.name.endswith("_created"):
                    merged.add(_key(s.name, s.labels), s.value)
            self.requests += sum(s.value for s in fam.samples if s.name == REQUESTS_SAMPLE)


def merge(workers: Sequence[Iterable[Metric]], retired: Retired | None = None) -> list[Metric]:
    """Return the families of ``workers`` (and of ``retired`` ones) merged, in first-seen order."""
    out: dict[str, Family] = {}
    sources: list[Iterable[Metric]] = list(workers)
    for old in retired.families.values() if retired else ():
        merged = out.setdefault(old.name, Family(old.name, old.documentation, old.type))
        for key, value in old.samples.items():
            merged.add(key, value)
    for families in sources:
        for fam in families:
            merged = out.setdefault(fam.name, Family(fam.name, fam.documentation, fam.type))
            for s in fam.samples:
                merged.add(_key(s.name, s.labels), s.value, s.exemplar)
    return [family.metric() for family in out.values()]


class _Fixed(Collector):
    def __init__(self, metrics: Sequence[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._metrics


def render(metrics: Sequence[Metric], openmetrics: bool = False) -> bytes:
    """Return ``metrics`` in the Prometheus text format, or OpenMetrics (with exemplars)."""
    return exposition.render([_Fixed(metrics)], openmetrics)
