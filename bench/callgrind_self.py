"""Where a request's instructions go below the Python frames: self cost per C function of callgrind dumps.

    python -m bench.callgrind_self BUSY_DUMP [IDLE_DUMP] [--requests N] [--top 40]

``bench.instructions --keep DIR`` leaves each gateway's dumps in ``DIR/NAME``: the burst window
(``callgrind.out.PID.1``) and the idle one (``.2``). Given both and the number of requests, each
function's cost is (burst - idle) / requests, the same subtraction as the headline figure; given
one dump, its raw counts. The rows add up to the dumps' ``totals:`` lines, which in a burst dump
came out 5% above the ``summary:`` line the headline figure uses: read the table as shares.
``bench.instructions --functions N`` prints it for every gateway it measures. Self cost: what the
function's own instructions cost, not what it calls (the interpreter's loop is one row, each C
function it calls another).

The dumps are read directly (callgrind's format: compressed names, one cost line per position,
a ``calls=`` line followed by the call's inclusive cost, which is not the caller's own).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"\((\d+)\)(?: (.*))?$")
# Which name space each key compresses into: objects, files, functions.
_SPACE = {
    "ob": "ob",
    "cob": "ob",
    "fl": "fl",
    "fi": "fl",
    "fe": "fl",
    "cfi": "fl",
    "cfl": "fl",
    "fn": "fn",
    "cfn": "fn",
}


@dataclass(frozen=True, slots=True)
class SelfCosts:
    """Instructions executed in each function's (and each shared object's) own code."""

    functions: Counter[str]
    objects: Counter[str]

    def per_request(self, idle: SelfCosts, requests: int) -> SelfCosts:
        """Return (self - idle) / requests, per function and per object.

        A function busier in the idle window (the loop's own waiting) comes out negative: kept, so
        the rows add up to the difference of the dumps' totals.
        """
        return SelfCosts(
            _spread(self.functions, idle.functions, requests), _spread(self.objects, idle.objects, requests)
        )


def _spread(busy: Counter[str], idle: Counter[str], requests: int) -> Counter[str]:
    return Counter({name: round((busy.get(name, 0) - idle.get(name, 0)) / requests) for name in busy | idle})


class _Names:
    """Callgrind's name compression: ``(7) name`` defines id 7 in its space, ``(7)`` refers to it."""

    def __init__(self) -> None:
        self.known: dict[tuple[str, str], str] = {}

    def resolve(self, key: str, text: str) -> str:
        space = _SPACE[key]
        m = _NAME.match(text)
        if m is None:
            return text
        ident, name = m.groups()
        if name is not None:
            self.known[space, ident] = name
            return name
        return self.known.get((space, ident), text)


def self_costs(lines: Iterable[str]) -> SelfCosts:
    """Return the self cost of every function and shared object in one dump's lines."""
    names = _Names()
    functions: Counter[str] = Counter()
    objects: Counter[str] = Counter()
    fn = ob = "???"
    call_cost_next = False
    for raw in lines:
        line = raw.rstrip("\n")
        if not line or line[0] == "#":
            continue
        if line[0].isdigit() or line[0] in "+-*":
            if call_cost_next:  # the inclusive cost of the call just announced: not this function's own
                call_cost_next = False
                continue
            fields = line.split()
            if len(fields) > 1:
                cost = int(fields[1])
                functions[fn] += cost
                objects[ob] += cost
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "calls":
            call_cost_next = True
        elif key in _SPACE:
            name = names.resolve(key, value)
            if key == "fn":
                fn = name
            elif key == "ob":
                ob = name
    return SelfCosts(functions, objects)


def read(path: Path) -> SelfCosts:
    """Return the self costs of the dump at ``path``."""
    with path.open(encoding="utf-8", errors="replace") as f:
        return self_costs(f)


def table(costs: SelfCosts, top: int = 40) -> str:
    """Return the ``top`` functions, then the shared objects, by self cost, with their share of the total."""
    total = sum(costs.functions.values()) or 1
    lines = [f"{total:,} instructions in all", "", f"{'instructions':>12} {'share':>6}  function"]
    lines += [f"{c:>12,} {100 * c / total:>5.1f}%  {f}" for f, c in costs.functions.most_common(top)]
    lines += ["", f"{'instructions':>12} {'share':>6}  shared object"]
    lines += [f"{c:>12,} {100 * c / total:>5.1f}%  {o}" for o, c in costs.objects.most_common(12)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Print the table for one dump, or per request for a burst and an idle dump."""
    ap = argparse.ArgumentParser(prog="python -m bench.callgrind_self", description=__doc__.split("\n")[0])
    ap.add_argument("busy", type=Path, help="a callgrind dump (the burst window's)")
    ap.add_argument("idle", type=Path, nargs="?", help="the idle window's dump, subtracted")
    ap.add_argument("--requests", type=int, default=1, help="requests in the burst (divides the difference)")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args(argv)
    costs = read(args.busy)
    if args.idle is not None:
        costs = costs.per_request(read(args.idle), args.requests)
    print(table(costs, args.top))


if __name__ == "__main__":
    main()
