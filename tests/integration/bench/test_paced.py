"""``python -m bench.paced`` end to end: a real nginx backend, the gateway with and without BUSY_POLL_US,
one paced connection each; every request is answered at the asked rate and the gateway's CPU is read."""

from __future__ import annotations

import subprocess

from tests.support.procs import PY, REPO, python_env


def test_paced_requests_are_answered_and_the_gateways_cpu_is_reported() -> None:
    argv = [
        PY,
        "-m",
        "bench.paced",
        "--rates",
        "200",
        "--seconds",
        "1",
        "--extra-gateway",
        "bp:BUSY_POLL_US=200",
    ]
    done = subprocess.run(argv, cwd=REPO, env=python_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[1:]}
    assert set(rows) == {"gateway", "bp"}
    for name, (_, rate, answered, cpu, us, p50, p99) in rows.items():
        assert rate == "200" and 150 <= float(answered.replace(",", "")) <= 201, (name, answered)
        assert float(cpu.rstrip("%")) > 0 and float(us.replace(",", "")) > 0, (name, cpu)
        assert 0 < float(p50) <= float(p99), (name, p50, p99)
