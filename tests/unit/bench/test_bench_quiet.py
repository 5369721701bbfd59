"""Noise in ``bench.run``: CPU steal and busy time from /proc/stat, the CPU model, and noisy runs refused."""

from __future__ import annotations

import argparse
from dataclasses import replace

import pytest
from bench.measure import run_line
from bench.quiet import CLOCK_TICKS, CpuTimes, cpu_model, idle_policy, interval, noise, parse_proc_stat
from bench.report import Measurement, Summary, format_table, summarize
from bench.run import EXIT_ERRORS, EXIT_NOISY, EXIT_RATIO, noisy_runs, verdict

from tests.unit.bench.results import wrk_result

# A real-shaped sample: user nice system idle iowait irq softirq steal guest guest_nice.
BEFORE = """\
cpu  1000 10 500 8000 40 0 50 400 30 0
cpu0 600 5 300 3900 20 0 30 100 30 0
cpu1 400 5 200 4100 20 0 20 300 0 0
intr 123456 0 0
ctxt 987654
"""
AFTER = """\
cpu  1300 10 600 8500 50 0 60 560 90 0
cpu0 800 5 350 4100 25 0 35 110 90 0
cpu1 500 5 250 4400 25 0 25 450 0 0
intr 123999 0 0
"""


def test_parse_proc_stat_splits_busy_idle_and_steal_per_line_without_counting_guest_twice() -> None:
    cpus = parse_proc_stat(BEFORE)
    assert set(cpus) == {"cpu", "cpu0", "cpu1"}
    # busy = user + nice + system + irq + softirq; guest (30) is already inside user.
    assert cpus["cpu"] == CpuTimes(busy=1000 + 10 + 500 + 0 + 50, idle=8000 + 40, steal=400)
    assert cpus["cpu1"].steal == 300
    assert cpus["cpu"].total == 1560 + 8040 + 400


def test_parse_proc_stat_reads_old_kernels_short_lines_and_needs_the_aggregate_line() -> None:
    assert parse_proc_stat("cpu 10 0 5 100\n")["cpu"] == CpuTimes(busy=15, idle=100, steal=0)
    with pytest.raises(ValueError, match="no aggregate cpu line"):
        parse_proc_stat("cpu0 10 0 5 100\nintr 1\n")


def test_interval_reports_steal_seconds_of_the_machine_and_the_worst_watched_cores_share() -> None:
    before, after = parse_proc_stat(BEFORE), parse_proc_stat(AFTER)
    got = interval(before, after, cores=(0, 1))
    assert got.steal_s == pytest.approx(160 / CLOCK_TICKS)
    assert got.busy_s == pytest.approx((300 + 100 + 10) / CLOCK_TICKS)  # steal is not busy time of ours
    # cpu1 lost 150 of its 155 busy + 305 idle + 150 stolen jiffies; cpu0 only 10 of 470.
    assert got.steal_share == pytest.approx(150 / (155 + 305 + 150))
    assert interval(before, after, cores=(0,)).steal_share == pytest.approx(10 / (255 + 205 + 10))
    whole = interval(before, after)  # no cores named: the machine as a whole
    assert whole.steal_share == pytest.approx(160 / (410 + 510 + 160))
    assert whole.busy_share == pytest.approx(410 / (410 + 510 + 160))


def test_cpu_model_is_the_first_model_name_or_unknown() -> None:
    info = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nprocessor\t: 1\n"
    assert cpu_model(info + "model name\t: other\n") == "AMD EPYC 7B13"
    assert cpu_model("processor\t: 0\nBogoMIPS\t: 50.00\n") == "unknown"


def test_noise_names_each_limit_that_was_exceeded() -> None:
    assert noise(0.10, 0.01, max_other=0.15, max_steal=0.03) == []
    assert noise(None, None, max_other=0.15, max_steal=0.03) == []
    reasons = noise(0.40, 0.12, max_other=0.15, max_steal=0.03)
    assert reasons == ["other processes used 0.40 cores (limit 0.15)", "CPU steal 12.0% (limit 3.0%)"]


def test_each_run_line_and_the_table_show_the_steal() -> None:
    m = Measurement(
        "gateway", "get", 0, wrk_result(1000), cpu_s=0.1, other_cores=0.02, steal_s=0.42, steal_share=0.021
    )
    assert "steal 0.42s (2.1%)" in run_line(m)
    worse = Measurement("gateway", "get", 1, wrk_result(1000), steal_s=1.0, steal_share=0.08)
    [s] = summarize([m, worse])
    assert s.steal_share == pytest.approx(0.08)
    header, _, row = format_table([s]).splitlines()
    assert "steal" in header.split()
    assert "8.0%" in row.split()


def _args(**overrides: object) -> argparse.Namespace:
    base: dict[str, object] = {
        "min_ratio": 0.12,
        "max_other": 0.15,
        "max_steal": 0.03,
        "strict_quiet": False,
        "runs": 3,
    }
    return argparse.Namespace(**{**base, **overrides})


def _summaries(steal: float, non2xx: int = 0, gateway_rps: float = 10_000) -> list[Summary]:
    return summarize(
        [
            Measurement("nginx-proxy", "get", 0, wrk_result(50_000), steal_share=0.0),
            Measurement("gateway", "get", 0, wrk_result(gateway_rps, non2xx=non2xx), steal_share=steal),
        ]
    )


def test_a_run_with_steal_is_marked_noisy_and_fails_only_with_strict_quiet(
    capsys: pytest.CaptureFixture[str],
) -> None:
    noisy = _summaries(steal=0.20)
    assert noisy_runs(noisy, _args()) == {"GET gateway": ["CPU steal 20.0% (limit 3.0%)"]}
    assert verdict(noisy, _args(), "AMD EPYC 7B13") == 0
    out = capsys.readouterr().out
    assert "NOISY, DO NOT QUOTE" in out
    assert "CPU: AMD EPYC 7B13" in out
    assert verdict(noisy, _args(strict_quiet=True), "x") == EXIT_NOISY
    assert verdict(_summaries(steal=0.01), _args(strict_quiet=True), "x") == 0


def test_the_idle_policy_names_the_driver_and_the_guests_poll_window() -> None:
    assert idle_policy("haltpoll\n", "0\n") == "haltpoll, polls 0 µs before halting"
    assert idle_policy("haltpoll\n", "200000\n") == "haltpoll, polls 200 µs before halting"
    assert idle_policy("intel_idle\n", None) == "intel_idle"
    assert idle_policy(None, None) == "none"
    assert idle_policy("haltpoll", None) == "haltpoll"  # the governor's parameters unreadable


def test_the_verdict_prints_the_idle_policy_beside_the_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    verdict(_summaries(steal=0.0), _args(), "AMD EPYC 7B13", (), "haltpoll, polls 0 µs before halting")
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("CPU: "))
    assert line.startswith("CPU: AMD EPYC 7B13 (")
    assert line.endswith(" cores; idle: haltpoll, polls 0 µs before halting); median of 3 run(s)")


def test_errors_outrank_noise_and_noise_outranks_a_missed_ratio() -> None:
    strict = _args(strict_quiet=True)
    assert verdict(_summaries(steal=0.20, non2xx=5), strict, "x") == EXIT_ERRORS
    assert verdict(_summaries(steal=0.20, gateway_rps=1_000), strict, "x") == EXIT_NOISY
    assert verdict(_summaries(steal=0.0, gateway_rps=1_000), strict, "x") == EXIT_RATIO


def _with(config: str, socket_errors: int) -> list[Summary]:
    return summarize(
        [
            Measurement("nginx-proxy", "get", 0, wrk_result(50_000), steal_share=0.0),
            Measurement("gateway", "get", 0, wrk_result(20_000), steal_share=0.0),
            Measurement(
                config, "get", 0, replace(wrk_result(2_000), read_errors=socket_errors), steal_share=0.0
            ),
        ]
    )


def test_a_compared_peers_errors_are_reported_but_leave_the_status_alone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert verdict(_with("proxy.py", socket_errors=34), _args(), "x") == 0
    assert "PEER ERRORS (status unchanged): GET proxy.py: 34 socket errors" in capsys.readouterr().err
    # The host-independent floor is a yardstick, like nginx: its errors spoil the measurement.
    assert verdict(_with("bare-asgi", socket_errors=1), _args(), "x") == EXIT_ERRORS
    assert "ERRORS: GET bare-asgi: 1 socket errors" in capsys.readouterr().err
