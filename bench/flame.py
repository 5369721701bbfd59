"""Where a proxied request's CPU goes, sampled by py-spy under wrk: a flame graph and the top frames.

    python -m bench.flame [--duration 10] [--connections 64] [--method GET|POST] [--rate 500] [--native]
        [--extra-gateway NAME:KEY=VALUE[,KEY=VALUE]]... [--variant NAME=CMD]... [--header 'NAME: VALUE']
        [--no-gateway] [--out bench/flame]

Each gateway runs pinned to core 1 in front of the nginx backend, as in ``bench.run``; wrk (core 0)
loads it for a warm-up and then twice ``--duration`` seconds, while ``py-spy record --nonblocking``
(also on core 0, so it takes nothing from the gateway's core) samples it at ``--rate`` Hz: once
for ``{out}/{name}-{method}.svg`` (open it in a browser: a frame's width is its share of the
samples, click to zoom) and once for the collapsed stacks, from which the table of the frames with
the most samples of their own (self) and in total (a frame and what it calls) is printed and
written next to the SVG. ``--native`` adds the C frames (uvloop, httptools, the interpreter), at
a higher sampling cost (py-spy then pauses the process for each sample). Wall-clock samples of a
busy process: idle time (the event loop waiting in ``epoll``) shows as the loop's ``run_forever``
frame with nothing above it.

Not a measure of speed (sampling perturbs it; ``bench.run`` and ``bench.instructions`` are the
figures): a map of where to look. Needs ``py-spy`` (a dev dependency) and root or ptrace rights.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.gateway import SERVICE, GatewayLaunch, gateway_config, start_gateway, write_config
from bench.nginx import start_backend
from bench.procs import REPO, Proc, find_binary, free_port
from bench.variants import GatewayVariant, gateway_variants
from bench.wrk import wrk_command

GATEWAY_CORE, CLIENT_CORE = 1, 0
WARMUP = 2.0


@dataclass(frozen=True, slots=True)
class Frames:
    """Samples per frame, counted from collapsed stacks: its own (leaf) and in total (anywhere in a stack)."""

    total_samples: int
    self_samples: Counter[str]
    inclusive: Counter[str]


def count_frames(collapsed: Iterable[str]) -> Frames:
    """Count ``frame;frame;...;leaf N`` lines; a frame repeated in one stack counts once in total."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for line in collapsed:
        stack, _, n = line.rstrip("\n").rpartition(" ")
        if not stack or not n.isdigit():
            continue
        samples = int(n)
        frames = stack.split(";")
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            anywhere[frame] += samples
    return Frames(total, own, anywhere)


def top_table(frames: Frames, n: int = 25) -> str:
    """Return the ``n`` frames with the most self samples, then with the most in total, as percentages."""
    if not frames.total_samples:
        return "no samples"
    lines = [f"{frames.total_samples:,} samples", "", f"{'self %':>7}  frame"]
    lines += [f"{100 * c / frames.total_samples:7.2f}  {f}" for f, c in frames.self_samples.most_common(n)]
    lines += ["", f"{'total %':>7}  frame"]
    lines += [f"{100 * c / frames.total_samples:7.2f}  {f}" for f, c in frames.inclusive.most_common(n)]
    return "\n".join(lines)


def py_spy() -> str:
    """Return the py-spy next to this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else find_binary("py-spy")


def py_spy_command(pid: int, duration: float, rate: int, out: Path, fmt: str, native: bool) -> list[str]:
    """Return the py-spy command sampling ``pid``, pinned to the client's core.

    Without pausing it, except with ``native``: py-spy can only unwind C stacks of a stopped process.
    """
    argv = [
        py_spy(),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(duration))),
        "--rate",
        str(rate),
        "--format",
        fmt,
        "--output",
        str(out),
        "--function",  # one frame per function (its first line), not per line being run
    ]
    argv.append("--native" if native else "--nonblocking")
    return ["taskset", "-c", str(CLIENT_CORE), *argv]


def _sample(proc: Proc, args: argparse.Namespace, url: str, out: Path, fmt: str) -> None:
    """Load the gateway with wrk for ``--duration`` seconds while py-spy samples it into ``out``."""
    headers = [args.header] if args.header else []
    wrk = subprocess.Popen(
        wrk_command(
            url, args.duration + 1, args.connections, args.method == "POST", CLIENT_CORE, headers=headers
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        spy = py_spy_command(proc.pid, args.duration, args.rate, out, fmt, args.native)
        done = subprocess.run(spy, capture_output=True, text=True, timeout=args.duration + 60, check=False)
        if done.returncode != 0 or not out.exists():
            raise SystemExit(f"py-spy failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    finally:
        wrk.wait(timeout=args.duration + 60)


def profile(variant: GatewayVariant, args: argparse.Namespace, backend: Sequence[int], root: Path) -> Path:
    """Sample ``variant``: write its SVG and its table into ``--out``; return the SVG's path."""
    workdir = root / variant.name
    config = write_config(workdir, gateway_config(backend))
    port = free_port()
    launch = GatewayLaunch(variant.command, env=variant.env)
    proc = start_gateway(workdir, config, port, GATEWAY_CORE, launch, f"/{SERVICE}/ready")
    url = f"http://127.0.0.1:{port}/{SERVICE}/anything"
    out: Path = args.out
    stem = out / f"{variant.name}-{args.method.lower()}"
    try:
        headers = [args.header] if args.header else []
        warm = wrk_command(url, WARMUP, args.connections, args.method == "POST", CLIENT_CORE, headers=headers)
        subprocess.run(warm, capture_output=True, check=False, timeout=WARMUP + 60)
        svg = stem.with_suffix(".svg")
        _sample(proc, args, url, svg, "flamegraph")
        collapsed = workdir / "stacks.txt"
        _sample(proc, args, url, collapsed, "raw")
    finally:
        proc.stop(timeout=30.0)
    table = top_table(count_frames(collapsed.read_text().splitlines()))
    stem.with_suffix(".txt").write_text(table + "\n")
    print(f"== {variant.name} {args.method}: {svg}\n{table}\n", flush=True)
    return svg


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    ap = argparse.ArgumentParser(prog="python -m bench.flame", description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of each sampled window")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--method", choices=("GET", "POST"), default="GET", help="POST sends 1 KiB")
    ap.add_argument("--rate", type=int, default=500, help="samples per second")
    ap.add_argument("--native", action="store_true", help="include C frames")
    ap.add_argument("--extra-gateway", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=CMD")
    ap.add_argument("--header", help="'NAME: VALUE' sent with every request (an API key, ...)")
    ap.add_argument("--no-gateway", action="store_true", help="profile only the variants")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "flame", help="where the SVGs and tables go")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Profile every gateway in turn."""
    args = parse_args(argv)
    py_spy()
    args.out.mkdir(parents=True, exist_ok=True)
    command = (str(REPO / ".venv" / "bin" / "python"), "-m", "msa_gateway.cli", "run")
    configs = () if args.no_gateway else ("gateway",)
    variants = gateway_variants(configs, command, (), args.extra_gateway, args.variant)
    with tempfile.TemporaryDirectory(prefix="msa-flame-") as tmp:
        root = Path(tmp)
        backend = (free_port(), free_port())
        nginx = start_backend(root / "nginx", *backend, core=CLIENT_CORE)
        try:
            for variant in variants:
                profile(variant, args, backend, root)
        finally:
            nginx.stop()


if __name__ == "__main__":
    main()
