"""Gateway variants of ``bench.run``: ``--variant NAME=CMD`` and ``--extra-gateway``, and how they are reported."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench import gateway
from bench.compare import CompareOptions, bench_argv, parse_compare_args, setup_commands
from bench.report import (
    Measurement,
    format_table,
    format_versus,
    paired_versus,
    summarize,
    to_json,
    versus_gateway,
)
from bench.run import parse_args
from bench.variants import GatewayVariant, parse_command_variant

from tests.unit.bench.results import wrk_result

OLD = "/tmp/bench-old/.venv/bin/msa-gateway run"


def test_a_command_variant_runs_its_own_command_with_the_shared_environment() -> None:
    args = parse_args(
        [
            "--gateway-cmd",
            "/new/msa-gateway run",
            "--gateway-env",
            "A=1",
            "--extra-gateway",
            "aio:UPSTREAM_CLIENT=aiohttp,A=2",
            "--variant",
            f"old={OLD}",
        ]
    )
    assert args.gateways == [
        GatewayVariant("gateway", ("/new/msa-gateway", "run"), {"A": "1"}),
        GatewayVariant("aio", ("/new/msa-gateway", "run"), {"A": "2", "UPSTREAM_CLIENT": "aiohttp"}),
        GatewayVariant("old", ("/tmp/bench-old/.venv/bin/msa-gateway", "run"), {"A": "1"}),
    ]


def test_variant_commands_split_like_a_shell_and_keep_equals_signs() -> None:
    assert parse_command_variant("v2=env X='a b' Y=1 /opt/gw/bin/msa-gateway run") == (
        "v2",
        ("env", "X=a b", "Y=1", "/opt/gw/bin/msa-gateway", "run"),
    )


def test_variants_are_measured_without_the_builtin_gateway_too() -> None:
    args = parse_args(
        ["--configs", "direct,nginx-proxy", "--variant", f"old={OLD}", "--variant", "new=gw run"]
    )
    assert [v.name for v in args.gateways] == ["old", "new"]


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--variant", "gateway=x run"], "needs a new NAME"),
        (["--variant", "nginx-proxy=x run"], "needs a new NAME"),
        (["--variant", "old=a", "--variant", "old=b"], "needs a new NAME"),
        (["--extra-gateway", "old:A=1", "--variant", "old=b"], "needs a new NAME"),
        (["--variant", "=x run"], "NAME=CMD"),
        (["--variant", "no command"], "NAME=CMD"),
        (["--variant", "a/b=x"], "NAME=CMD"),
        (["--variant", "old="], "the command is empty"),
        (["--variant", "old='unclosed"], "cannot split"),
        (["--extra-gateway", "direct:X=1"], "needs a new NAME"),
    ],
)
def test_bad_variants_stop_with_a_usage_error_saying_why(
    argv: list[str], reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    assert reason in capsys.readouterr().err


def test_every_gateway_gets_port_and_config_in_its_environment_and_no_pythonpath() -> None:
    inherited = {"PATH": "/bin", "PYTHONPATH": "/work/main/src", "DEBUG": "true", "PORT": "1"}
    env = gateway.gateway_env(inherited, {"UPSTREAM_CLIENT": "aiohttp"}, Path("/tmp/x/gateway.yaml"), 40123)
    assert env == {
        "PATH": "/bin",
        "UPSTREAM_CLIENT": "aiohttp",
        "GATEWAY_CONFIG": "/tmp/x/gateway.yaml",
        "HOST": "127.0.0.1",
        "PORT": "40123",
    }
    assert (
        gateway.gateway_env(inherited, {"PYTHONPATH": "/old/src"}, Path("c"), 1)["PYTHONPATH"] == "/old/src"
    )


def _old_and_new() -> list[Measurement]:
    return [
        Measurement("nginx-proxy", "get", 0, wrk_result(50_000, p99=2.0, requests=50_000), cpu_s=1.0),
        Measurement(
            "gateway", "get", 0, wrk_result(12_000, p99=10.0, requests=12_000), cpu_s=1.2
        ),  # 100 us/req
        Measurement("old", "get", 0, wrk_result(10_000, p99=12.5, requests=10_000), cpu_s=1.25),  # 125 us/req
        Measurement("gateway", "post", 0, wrk_result(9_000, p99=16.0, requests=9_000), cpu_s=None),
        Measurement("old", "post", 0, wrk_result(9_000, p99=16.0, requests=9_000), cpu_s=None),
    ]


def test_versus_gateway_divides_the_gateways_figures_by_each_variants() -> None:
    got = versus_gateway(summarize(_old_and_new()))
    assert got == {
        "get: gateway/old": {
            "requests_per_s": pytest.approx(1.2),
            "p99_ms": pytest.approx(0.8),
            "cpu_us_per_request": pytest.approx(0.8),
        },
        "post: gateway/old": {
            "requests_per_s": pytest.approx(1.0),
            "p99_ms": pytest.approx(1.0),
            "cpu_us_per_request": None,
        },
    }
    assert format_versus(got) == [
        "get: gateway/old = req/s x1.200, p99 x0.800, CPU us/req x0.800",
        "post: gateway/old = req/s x1.000, p99 x1.000, CPU us/req x-",
    ]


def test_versus_gateway_is_empty_without_variants_or_without_the_gateway() -> None:
    ms = _old_and_new()
    assert versus_gateway(summarize([m for m in ms if m.config != "old"])) == {}
    assert versus_gateway(summarize([m for m in ms if m.config != "gateway"])) == {}


def test_the_table_lists_a_variant_after_the_gateway_with_a_column_against_it() -> None:
    lines = format_table(summarize(_old_and_new())).splitlines()
    assert lines[0].split()[-2:] == ["x", "gateway"]
    configs = [line.split()[1] for line in lines[2:]]
    assert configs == ["nginx-proxy", "gateway", "old", "gateway", "old"]
    old_get = lines[4].split()
    assert old_get[2] == "10,000" and old_get[5] == "125"  # req/s, CPU us/req
    assert old_get[-3:] == ["0.200", "-", "0.833"]  # x nginx-proxy, x direct, x gateway
    plain = format_table(summarize([m for m in _old_and_new() if m.config != "old"]))
    assert "x gateway" not in plain


def test_json_results_carry_the_comparison() -> None:
    ms = _old_and_new()
    doc = to_json({}, ms, summarize(ms))
    assert doc["versus_gateway"]["get: gateway/old"]["requests_per_s"] == pytest.approx(1.2)
    assert {s["config"] for s in doc["summaries"]} == {"nginx-proxy", "gateway", "old"}


def test_compare_passes_unknown_arguments_on_to_bench_run_after_the_old_variant() -> None:
    opts = parse_compare_args(["--rev", "v0.1", "--runs", "3", "--only", "get"])
    assert opts == CompareOptions("v0.1", Path("/tmp/bench-old"), "old", ("--runs", "3", "--only", "get"))
    argv = bench_argv(opts)
    assert argv == ["--variant", f"old={OLD}", "--runs", "3", "--only", "get"]
    args = parse_args(argv)
    assert [v.name for v in args.gateways] == ["gateway", "old"] and args.runs == 3


def test_compare_adds_a_worktree_or_moves_the_existing_one_then_installs_it_in_its_venv() -> None:
    opts = parse_compare_args(["--dir", "/tmp/o", "--name", "prev"])
    fresh = setup_commands(opts, "abc123", worktree_exists=False)
    assert fresh[0] == ["git", "worktree", "add", "--detach", "/tmp/o", "abc123"]
    assert fresh[1][1:] == ["-m", "venv", "/tmp/o/.venv"]
    assert fresh[2] == ["/tmp/o/.venv/bin/pip", "install", "--quiet", "-e", "/tmp/o"]
    assert fresh[3][:2] == ["sh", "-c"]  # a commit with setup.py gets its request path compiled
    assert "/tmp/o/.venv/bin/python /tmp/o/setup.py -q build_ext --inplace" in fresh[3][2]
    assert setup_commands(opts, "abc123", worktree_exists=True)[0] == [
        "git",
        "-C",
        "/tmp/o",
        "checkout",
        "--quiet",
        "--detach",
        "abc123",
    ]
    assert bench_argv(opts)[:2] == ["--variant", "prev=/tmp/o/.venv/bin/msa-gateway run"]


def test_wrk_sends_each_header_option() -> None:
    from bench.wrk import wrk_command

    argv = wrk_command("http://127.0.0.1:1/x", 5, 8, post=True, core=None, headers=["X-API-Key: k", "A: b"])
    assert argv[argv.index("-H") : argv.index("-H") + 4] == ["-H", "X-API-Key: k", "-H", "A: b"]


def test_with_policies_sets_the_default_policies_and_keeps_the_rest() -> None:
    import yaml
    from bench.with_policies import REPO, with_policies

    from msa_gateway.settings import parse_config

    config = {"defaults": {"balancer": "random"}, "services": {"bench": {"instances": []}}}
    files = sorted((REPO / "bench" / "policies").glob("*.yaml"))
    assert {"api_key.yaml", "api_key_ratelimit_local.yaml", "ratelimit_redis.yaml"} <= {f.name for f in files}
    for file in files:
        policies = yaml.safe_load(file.read_text())
        merged = with_policies(config, policies)
        assert merged["services"] == config["services"]
        parsed = parse_config(merged, file.name)  # every policy file of the bench is valid config
        assert parsed.defaults.balancer == "random" and {n for n, _ in parsed.defaults.policies} == set(
            policies
        )


def test_paired_ratios_compare_each_run_with_its_own_and_take_the_median() -> None:
    # The host drifts: run 0 is fast for both, run 1 slow for both, run 2 in between. Each config's own
    # median comes from a different run (gateway's from run 2, old's from run 0), the pairs do not.
    ms = [
        Measurement("gateway", "get", 0, wrk_result(12_000, p99=10.0, requests=12_000), cpu_s=1.2),
        Measurement("old", "get", 0, wrk_result(11_000, p99=11.0, requests=11_000), cpu_s=1.1),
        Measurement("gateway", "get", 1, wrk_result(6_600, p99=20.0, requests=6_600), cpu_s=1.32),
        Measurement("old", "get", 1, wrk_result(6_000, p99=22.0, requests=6_000), cpu_s=1.2),
        Measurement("gateway", "get", 2, wrk_result(7_700, p99=15.0, requests=7_700), cpu_s=1.155),
        Measurement("old", "get", 2, wrk_result(11_500, p99=10.0, requests=11_500), cpu_s=1.15),
    ]
    paired = paired_versus(ms)["get: gateway/old"]
    assert paired["requests_per_s"] == pytest.approx(12_000 / 11_000)  # the middle of 1.09, 1.10 and 0.67
    assert paired["cpu_us_per_request"] == pytest.approx(1.0)  # 100 vs 100, 200 vs 200, 150 vs 100
    assert versus_gateway(summarize(ms))["get: gateway/old"]["requests_per_s"] == pytest.approx(
        7_700 / 11_000
    )
    assert paired_versus([m for m in ms if m.config == "gateway"]) == {}
