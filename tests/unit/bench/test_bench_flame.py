"""bench/flame.py's pure parts: counting collapsed stacks, the table, py-spy's command line."""

from __future__ import annotations

from pathlib import Path

from bench.flame import CLIENT_CORE, count_frames, py_spy_command, top_table


def test_frames_are_counted_by_their_own_samples_and_once_per_stack_in_total() -> None:
    frames = count_frames(
        [
            "run;handle;parse 3",
            "run;handle;write 5\n",
            "run;handle;handle 2",  # recursion: counted once in the total
            "garbage line",
            "",
        ]
    )
    assert frames.total_samples == 10
    assert frames.self_samples == {"parse": 3, "write": 5, "handle": 2}
    assert frames.inclusive["run"] == 10 and frames.inclusive["handle"] == 10
    assert frames.inclusive["write"] == 5


def test_the_table_lists_self_then_total_shares_most_first() -> None:
    table = top_table(count_frames(["a;b 3", "a;c 1"]), n=1)
    lines = table.splitlines()
    assert lines[0] == "4 samples"
    assert lines[3] == "  75.00  b"  # the first self row: b has 3 of 4
    assert lines[-1] == " 100.00  a"  # the first total row: a is in every stack
    assert top_table(count_frames([])) == "no samples"


def test_py_spy_samples_without_pausing_the_gateway_from_the_clients_core() -> None:
    argv = py_spy_command(4242, 9.6, 500, Path("/tmp/x.svg"), "flamegraph", native=True)
    assert argv[:3] == ["taskset", "-c", str(CLIENT_CORE)]
    assert argv[3].endswith("py-spy") and argv[4] == "record"
    joined = " ".join(argv)
    for part in ("--pid 4242", "--duration 10", "--rate 500", "--format flamegraph", "--output /tmp/x.svg"):
        assert part in joined
    assert "--function" in argv and "--native" in argv
    assert "--nonblocking" not in argv  # py-spy refuses to unwind C stacks without pausing
    plain = py_spy_command(1, 1, 1, Path("o"), "raw", native=False)
    assert "--nonblocking" in plain and "--native" not in plain
