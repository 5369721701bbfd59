"""The access line: its fields, its cached clock, and lines written together once per loop turn."""

from __future__ import annotations

import asyncio
import io
import json
import time

import pytest

from msa_gateway.observability.access import AccessLog
from msa_gateway.observability.logging import iso_now


def _log(log: AccessLog, **extra: object) -> None:
    fields: dict[str, object] = {
        "method": "GET",
        "path": "/svc/x",
        "status": 200,
        "started": time.perf_counter(),
        "request_id": "rid",
        "service": "svc",
        "instance": "10.0.0.1:80",
        "nbytes": 2,
        "client": "127.0.0.1",
    }
    fields.update(extra)
    log.log(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "moments",
    [
        [1_700_000_000.0004, 1_700_000_000.0009, 1_700_000_000.9991, 1_700_000_001.0, 1_700_000_061.5],
        [1_767_225_599.999, 1_767_225_600.001],  # across midnight and a new year
    ],
)
def test_timestamp_matches_iso_now_at_every_moment(
    monkeypatch: pytest.MonkeyPatch, moments: list[float]
) -> None:
    log = AccessLog(io.StringIO())
    for moment in moments:
        monkeypatch.setattr(time, "time", lambda m=moment: m)
        assert log._timestamp() == iso_now(int(moment * 1000) / 1000)


def test_a_line_has_every_field_and_the_duration_in_ms_to_the_microsecond() -> None:
    stream = io.StringIO()
    log = AccessLog(stream)
    _log(log, started=time.perf_counter() - 0.0123456, trace_id="ab" * 16, error="timeout")
    line = json.loads(stream.getvalue())
    assert line["event"] == "request" and line["status"] == 200 and line["level"] == "info"
    assert line["trace_id"] == "ab" * 16 and line["error"] == "timeout"
    assert 12.345 <= line["duration_ms"] < 100 and line["duration_ms"] == round(line["duration_ms"], 3)
    assert stream.getvalue().endswith("}\n")


async def test_lines_of_one_loop_turn_are_written_in_one_write() -> None:
    writes: list[str] = []

    class Stream(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    log = AccessLog(Stream())
    for n in range(3):
        _log(log, request_id=f"r{n}")
    assert writes == []  # held until the loop turns
    await asyncio.sleep(0)
    assert len(writes) == 1
    assert [json.loads(x)["request_id"] for x in writes[0].splitlines()] == ["r0", "r1", "r2"]


async def test_lines_of_one_loop_turn_share_its_timestamp_and_the_next_turn_reads_the_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    log = AccessLog(stream)
    clock = [1_700_000_000.25]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    _log(log, request_id="a")
    clock[0] = 1_700_000_000.5  # the same turn, later: the turn's first reading stands
    _log(log, request_id="b")
    await asyncio.sleep(0)  # the turn ends: written
    _log(log, request_id="c")
    stamps = [json.loads(x)["timestamp"] for x in stream.getvalue().splitlines()]
    await asyncio.sleep(0)
    stamps.append(json.loads(stream.getvalue().splitlines()[-1])["timestamp"])
    assert stamps == [iso_now(1_700_000_000.25)] * 2 + [iso_now(1_700_000_000.5)]


async def test_the_running_loop_is_looked_up_once_not_once_a_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    log = AccessLog(stream)
    lookups: list[int] = []
    real = asyncio.get_running_loop

    def counted() -> asyncio.AbstractEventLoop:
        lookups.append(1)
        return real()

    monkeypatch.setattr(asyncio, "get_running_loop", counted)
    for n in range(3):
        _log(log, request_id=f"r{n}")
        await asyncio.sleep(0)
    assert len(stream.getvalue().splitlines()) == 3  # each turn's line written at its end
    assert len(lookups) == 1


def test_a_log_kept_across_loops_flushes_on_the_one_running() -> None:
    stream = io.StringIO()
    log = AccessLog(stream)

    async def one_turn(rid: str) -> int:
        _log(log, request_id=rid)
        await asyncio.sleep(0)
        return len(stream.getvalue().splitlines())

    first = asyncio.new_event_loop()
    try:
        assert first.run_until_complete(one_turn("a")) == 1
        # the first loop stopped but is not closed: the second one is found, not the stale one
        assert asyncio.run(one_turn("b")) == 2
    finally:
        first.close()
    _log(log, request_id="c")  # no loop at all: written at once
    assert len(stream.getvalue().splitlines()) == 3
