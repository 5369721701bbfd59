"""Render the metrics as Prometheus text or OpenMetrics, a slice at a time, never stalling the loop.

prometheus-client's ``generate_latest`` builds every sample as an object and formats it in one
go: at 2,000 services that held the event loop for most of a second while proxied requests
waited. Here each metric family is a header plus *chunks*: complete sample lines of one or more
series, produced lazily from the live numbers. A series is always read in one chunk (a histogram's
buckets, count and sum agree), and ``pieces`` hands the text out every ``SLICE`` seconds of work so
``stream`` can give the loop back in between. Families from ordinary prometheus-client metrics
(small: bounded by services that had errors, retries, ...) are formatted from their ``collect()``.

Exemplars (``# {trace_id="..."} value timestamp`` after a bucket) exist only in OpenMetrics; the
Prometheus text format never carries them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as CONTENT_TYPE_OPENMETRICS
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar, Sample
from prometheus_client.utils import floatToGoString

_go_float: Callable[[float], str] = floatToGoString

SLICE = 0.0005  # seconds of rendering between two returns to the event loop
ROWS_PER_CHUNK = 256  # single-sample series rendered together (each read on its own)
OPENMETRICS_TYPE = "application/openmetrics-text"
OM_ONLY_SUFFIXES = ("_created", "_gsum", "_gcount")  # the text format moves these into gauges


def wants_openmetrics(accept: str | None) -> bool:
    """Return whether an ``Accept`` header asks for OpenMetrics (as prometheus-client decides)."""
    if not accept:
        return False
    return any(part.split(";", 1)[0].strip() == OPENMETRICS_TYPE for part in accept.split(","))


def content_type(openmetrics: bool) -> str:
    """Return the ``Content-Type`` of an exposition in the chosen format."""
    return CONTENT_TYPE_OPENMETRICS if openmetrics else CONTENT_TYPE_PLAIN_0_0_4


def go_float(value: float) -> str:
    """Write a number as Prometheus does (``3.0``, ``+Inf``, ``1e+06``); counts take a shortcut.

    prometheus-client's ``floatToGoString`` was 40% of a scrape; below a million it is ``repr``.
    """
    kind = type(value)
    if kind is int and -1_000_000 < value < 1_000_000:
        return f"{value}.0"
    if kind is float and -1e6 < value < 1e6:  # NaN and the infinities fail the comparison
        return repr(value)
    return _go_float(value)


def escape_value(value: str) -> str:
    """Escape a label value (backslash, double quote, newline)."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def label_string(labels: Iterable[tuple[str, str]]) -> str:
    """Return ``k="v",...`` for ``labels`` sorted by name (the order prometheus-client writes)."""
    return ",".join(f'{k}="{escape_value(v)}"' for k, v in sorted(labels))


def line(name: str, labels: str, value: float, exemplar: str = "") -> str:
    """Return one sample line; ``labels`` is a ``label_string``, ``exemplar`` an ``exemplar_suffix``."""
    if labels:
        return f"{name}{{{labels}}} {go_float(value)}{exemplar}\n"
    return f"{name} {go_float(value)}{exemplar}\n"


def exemplar_suffix(labels: str, value: float, timestamp: float | None) -> str:
    """Return the OpenMetrics exemplar written after a sample's value."""
    if timestamp is None:
        return f" # {{{labels}}} {go_float(value)}"
    return f" # {{{labels}}} {go_float(value)} {timestamp!r}"


T = TypeVar("T")


def chunked(rows: Sequence[T], render: Callable[[T], str]) -> Iterator[str]:
    """Yield the lines ``render`` makes of ``rows``, ``ROWS_PER_CHUNK`` rows per chunk."""
    for start in range(0, len(rows), ROWS_PER_CHUNK):
        yield "".join(map(render, rows[start : start + ROWS_PER_CHUNK]))


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: its header and its sample lines, produced chunk by chunk."""

    name: str  # without ``_total`` for a counter, as in OpenMetrics
    documentation: str
    type: str  # counter, gauge or histogram
    chunks: Iterable[str]


@runtime_checkable
class Sliced(Protocol):
    """A collector that can also hand its families out lazily, one series (or a few) per chunk."""

    def families(self, openmetrics: bool) -> Iterator[Family]:
        """Yield the families; their chunks read the live numbers when iterated."""
        ...


def header(family: Family, openmetrics: bool) -> str:
    """Return the ``# HELP`` and ``# TYPE`` lines of ``family`` in the chosen format."""
    doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
    name = family.name
    if openmetrics:
        doc = doc.replace('"', r"\"")
    elif family.type == "counter":
        name += "_total"
    return f"# HELP {name} {doc}\n# TYPE {name} {family.type}\n"


def _sample_line(sample: Sample, openmetrics: bool) -> str:
    labels = label_string(sample.labels.items())
    ex: Exemplar | None = sample.exemplar
    suffix = ""
    if openmetrics and ex is not None:
        stamp = None if ex.timestamp is None else float(ex.timestamp)
        suffix = exemplar_suffix(label_string(ex.labels.items()), ex.value, stamp)
    return line(sample.name, labels, sample.value, suffix)


def from_metric(metric: Metric, openmetrics: bool) -> Iterator[Family]:
    """Return a collected prometheus-client family (the text format puts ``*_created`` in a gauge after)."""
    main: list[str] = []
    moved: list[str] = []
    for sample in metric.samples:
        target = moved if not openmetrics and sample.name[len(metric.name) :] in OM_ONLY_SUFFIXES else main
        target.append(_sample_line(sample, openmetrics))
    mtype = "untyped" if metric.type == "unknown" and not openmetrics else metric.type
    yield Family(metric.name, metric.documentation, mtype, ("".join(main),))
    if moved:
        yield Family(metric.name + "_created", metric.documentation, "gauge", ("".join(moved),))


def families(collectors: Iterable[Collector], openmetrics: bool) -> Iterator[Family]:
    """Yield every family of ``collectors`` in order: sliced ones lazily, the others collected."""
    for collector in collectors:
        if isinstance(collector, Sliced):
            yield from collector.families(openmetrics)
        else:
            for metric in collector.collect():
                yield from from_metric(metric, openmetrics)


def pieces(
    collectors: Iterable[Collector],
    openmetrics: bool,
    slice_seconds: float = SLICE,
    clock: Callable[[], float] = time.perf_counter,
) -> Iterator[bytes]:
    """Yield the exposition in pieces, each the output of about ``slice_seconds`` of work."""
    buf: list[str] = []
    start = clock()
    for family in families(collectors, openmetrics):
        buf.append(header(family, openmetrics))
        for chunk in family.chunks:
            buf.append(chunk)
            if clock() - start >= slice_seconds:
                yield "".join(buf).encode()
                buf.clear()
                start = clock()
    if openmetrics:
        buf.append("# EOF\n")
    yield "".join(buf).encode()


def render(collectors: Iterable[Collector], openmetrics: bool) -> bytes:
    """Return the whole exposition at once (for callers off the request path, and tests)."""
    return b"".join(pieces(collectors, openmetrics, slice_seconds=float("inf")))


async def stream(collectors: Iterable[Collector], openmetrics: bool) -> AsyncIterator[bytes]:
    """Yield the exposition piece by piece, letting the event loop run between pieces."""
    for piece in pieces(collectors, openmetrics):
        yield piece
        await asyncio.sleep(0)


async def render_async(collectors: Iterable[Collector], openmetrics: bool) -> bytes:
    """Return the whole exposition, rendered a slice at a time (the loop runs in between)."""
    return b"".join([piece async for piece in stream(collectors, openmetrics)])
