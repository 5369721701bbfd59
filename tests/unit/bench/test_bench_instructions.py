"""The pure parts of bench.instructions: reading a callgrind dump, the per-request figure, the table."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.instructions import Count, parse_args, report, request_bytes, summary

DUMP = b"""# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 4242
cmd:  python -m msa_gateway.cli run
part: 1

events: Ir

summary: 834629661

fl= (1) ???
fn= (1) 0x0000000000001100
0 3
totals: 834629661
"""


def test_summary_reads_the_total_instructions_of_a_dump() -> None:
    assert summary(DUMP) == 834_629_661


def test_a_dump_without_summary_is_an_error() -> None:
    with pytest.raises(ValueError, match="summary"):
        summary(b"events: Ir\ntotals: 12\n")


def test_per_request_takes_the_idle_window_off_the_busy_one() -> None:
    count = Count("gateway", busy=834_629_661, idle=88_672_801, requests=2000)
    assert count.per_request == pytest.approx(372_978.43)


def test_requests_name_the_bench_service_and_post_carries_1_kib() -> None:
    get = request_bytes("GET", ["X-API-Key: k", "Accept: */*"])
    assert get.startswith(b"GET /bench/anything HTTP/1.1\r\n")
    assert b"\r\nX-API-Key: k\r\nAccept: */*\r\n\r\n" in get
    assert get.endswith(b"\r\n\r\n")
    assert parse_args(["--header", "X-API-Key: k", "--header", "Accept: */*"]).header == [
        "X-API-Key: k",
        "Accept: */*",
    ]
    post = request_bytes("POST")
    head, body = post.split(b"\r\n\r\n", 1)
    assert b"Content-Length: 1024" in head
    assert len(body) == 1024


def test_report_gives_ratio_and_difference_to_the_first_gateway() -> None:
    table = report([Count("gateway", 3000, 1000, 10), Count("off", 2500, 1000, 10)])
    rows = table.splitlines()[1:]
    assert rows[0].split() == ["gateway", "200", "1.000", "+0"]
    assert rows[1].split() == ["off", "150", "0.750", "-50"]


def test_keep_names_the_directory_the_dumps_stay_in(tmp_path: Path) -> None:
    assert parse_args(["--keep", str(tmp_path)]).keep == tmp_path
    assert parse_args([]).keep is None  # a temporary directory, removed afterwards


def test_functions_table_reads_the_two_dumps_of_a_count(tmp_path: Path) -> None:
    from bench.instructions import functions_table

    dump = "events: Ir\nob=(1) /lib/libpython.so\nfn=(1) run\n10 {}\n"
    (tmp_path / "busy").write_text(dump.format(5_000))
    (tmp_path / "idle").write_text(dump.format(1_000))
    count = Count("gateway", 5_000, 1_000, 4, (tmp_path / "busy", tmp_path / "idle"))
    lines = functions_table(count, 5).splitlines()
    assert lines[0] == "== gateway: self cost per request"
    assert lines[1] == "1,000 instructions in all" and lines[4].split() == ["1,000", "100.0%", "run"]
    assert parse_args(["--functions", "30"]).functions == 30 and parse_args([]).functions == 0
