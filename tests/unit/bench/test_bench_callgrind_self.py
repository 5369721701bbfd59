"""``bench.callgrind_self``: self cost per C function and per shared object, read from callgrind dumps."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.callgrind_self import main, read, self_costs, table

# Two objects, names compressed on first use; ``run`` calls ``alloc`` (the call's inclusive cost,
# 500, is alloc's, not run's) and a C function in another object; ``'2`` marks recursion.
DUMP = """# callgrind format
version: 1
events: Ir
summary: 1000

ob=(1) /lib/libpython.so
fl=(1) ceval.c
fn=(1) run'2
10 100
+2 50
cob=(2) /lib/ext.so
cfi=(2) ext.c
cfn=(2) parse
calls=3 40
* 500
fn=(3) alloc
20 300
ob=(2)
fl=(2)
fn=(2)
40 200
fi=(1)
fe=(2)
+1 20
totals: 670
"""


def test_self_costs_resolve_names_and_leave_out_what_a_call_costs() -> None:
    costs = self_costs(DUMP.splitlines())
    assert costs.functions == {"run'2": 150, "alloc": 300, "parse": 220}
    assert costs.objects == {"/lib/libpython.so": 450, "/lib/ext.so": 220}
    assert sum(costs.functions.values()) == 670  # the dump's totals line


def test_per_request_subtracts_the_idle_window_and_divides() -> None:
    busy = self_costs(DUMP.splitlines())
    idle = self_costs(DUMP.replace("20 300", "20 900").splitlines())  # alloc busier while idle
    per = busy.per_request(idle, 10)
    assert per.functions == {"run'2": 0, "alloc": -60, "parse": 0}
    text = table(busy, top=2)
    assert text.splitlines()[0] == "670 instructions in all"
    assert "300  44.8%  alloc" in text and "parse" in text and "run'2" not in text.split("shared object")[0]


def test_the_command_prints_the_table_per_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "busy").write_text(DUMP.replace("10 100", "10 2100"))
    (tmp_path / "idle").write_text(DUMP)
    assert read(tmp_path / "idle").functions["run'2"] == 150
    main([str(tmp_path / "busy"), str(tmp_path / "idle"), "--requests", "100", "--top", "1"])
    out = capsys.readouterr().out
    assert out.startswith("20 instructions in all") and "20 100.0%  run'2" in out
