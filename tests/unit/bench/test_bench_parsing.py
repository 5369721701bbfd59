"""The pure parts of the benchmark: wrk output parsing, /proc parsing, medians, ratios, nginx configs."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest
from bench import gateway, nginx
from bench.measure import POST_BODY
from bench.procs import find_binary, parse_stat_cpu, parse_stat_ppid, parse_vmrss_kib
from bench.report import Measurement, cpu_ratios, format_table, ratio, ratios, summarize
from bench.stream import RSS_LIMIT, RssSampler, percentile
from bench.stream_backend import CHUNK, chunks, stream_sha256
from bench.wrk import POST_SCRIPT, WrkParseError, parse_time_ms, parse_wrk_output, wrk_command

from tests.unit.bench.results import wrk_result as _result

CLEAN = """\
Running 10s test @ http://127.0.0.1:40001/bench/anything
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   780.93us  109.62us   1.66ms   77.42%
    Req/Sec    60.79k     1.26k   61.79k    90.00%
  Latency Distribution
     50%  784.00us
     75%  845.00us
     90%    0.90ms
     99%    1.02ms
  604360 requests in 10.00s, 95.10MB read
Requests/sec:  60436.78
Transfer/sec:      9.51MB
"""

WITH_ERRORS = """\
Running 3s test @ http://127.0.0.1:40002/bench/anything
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    23.14ms   40.10ms   1.20s    91.00%
    Req/Sec     2.63k   200.00     3.00k    70.00%
  Latency Distribution
     50%   23.14ms
     75%   30.00ms
     90%  100.00ms
     99%    1.10s
  7875 requests in 3.01s, 1.20MB read
  Socket errors: connect 3, read 17, write 2, timeout 5
  Non-2xx or 3xx responses: 42
Requests/sec:   2616.28
Transfer/sec:    408.00KB
"""


@pytest.mark.parametrize(
    ("text", "ms"),
    [("612.00us", 0.612), ("1.23ms", 1.23), ("2.00s", 2000.0), ("1.50m", 90_000.0), ("0.90ms", 0.9)],
)
def test_parse_time_ms_converts_every_wrk_unit(text: str, ms: float) -> None:
    assert parse_time_ms(text) == pytest.approx(ms)


def test_parse_time_ms_rejects_garbage() -> None:
    with pytest.raises(WrkParseError):
        parse_time_ms("-nan")


def test_parse_clean_wrk_output_reads_throughput_percentiles_and_no_errors() -> None:
    r = parse_wrk_output(CLEAN)
    assert r.requests == 604360
    assert r.duration_s == pytest.approx(10.0)
    assert r.requests_per_s == pytest.approx(60436.78)
    assert r.p50_ms == pytest.approx(0.784)
    assert r.p90_ms == pytest.approx(0.90)
    assert r.p99_ms == pytest.approx(1.02)
    assert r.latency_avg_ms == pytest.approx(0.78093)
    assert r.latency_max_ms == pytest.approx(1.66)
    assert r.errors == 0


def test_parse_wrk_output_counts_socket_errors_and_non_2xx() -> None:
    r = parse_wrk_output(WITH_ERRORS)
    assert (r.connect_errors, r.read_errors, r.write_errors, r.timeouts) == (3, 17, 2, 5)
    assert r.socket_errors == 27
    assert r.non_2xx_3xx == 42
    assert r.errors == 69
    assert r.p99_ms == pytest.approx(1100.0)
    assert r.duration_s == pytest.approx(3.01)


def test_parse_wrk_output_without_latency_distribution_fails() -> None:
    text = "\n".join(line for line in CLEAN.splitlines() if "%" not in line or "Latency" in line)
    with pytest.raises(WrkParseError, match="--latency"):
        parse_wrk_output(text)


def test_parse_wrk_output_without_summary_fails() -> None:
    with pytest.raises(WrkParseError):
        parse_wrk_output(CLEAN.replace("Requests/sec:", "Reqs:"))


def test_wrk_command_pins_to_core_and_adds_post_script_only_for_post() -> None:
    get = wrk_command("http://127.0.0.1:1/x", 10, 64, post=False, core=0)
    post = wrk_command("http://127.0.0.1:1/x", 10, 64, post=True, core=0)
    assert get[:3] == ["taskset", "-c", "0"]
    assert {"-t1", "-c64", "-d10s", "--latency"} <= set(get)
    assert "-s" not in get
    assert post[post.index("-s") + 1] == str(POST_SCRIPT)
    assert get[-1] == post[-1] == "http://127.0.0.1:1/x"


def test_post_body_is_one_kib_and_lua_script_builds_the_same_size() -> None:
    assert len(POST_BODY) == 1024
    lua = POST_SCRIPT.read_text()
    assert 'string.rep("x", 1024 - 11)' in lua
    # The fixed parts of the Lua body, '{"data":"' and '"}', are the 11 bytes not repeated.
    assert POST_BODY == b'{"data":"' + b"x" * (1024 - 11) + b'"}'


def test_summarize_takes_medians_and_sums_errors_over_runs() -> None:
    ms = [
        Measurement("gateway", "get", 0, _result(1000, p99=9.0), cpu_s=0.1),
        Measurement("gateway", "get", 1, _result(3000, p99=1.0, non2xx=2), cpu_s=0.3),
        Measurement("gateway", "get", 2, _result(2000, p99=5.0), cpu_s=0.2),
    ]
    [s] = summarize(ms)
    assert s.runs == 3
    assert s.requests_per_s == 2000
    assert s.p99_ms == 5.0
    assert s.cpu_us_per_request == pytest.approx(200.0)  # 0.2 s over 1000 requests
    assert s.non_2xx_3xx == 2
    assert s.errors == 2


def test_summaries_are_ordered_get_before_post_and_direct_nginx_gateway() -> None:
    ms = [
        Measurement(c, w, 0, _result(1.0))
        for w in ("post", "get")
        for c in ("gateway", "direct", "nginx-proxy")
    ]
    order = [(s.workload, s.config) for s in summarize(ms)]
    assert order == [
        ("get", "direct"),
        ("get", "nginx-proxy"),
        ("get", "gateway"),
        ("post", "direct"),
        ("post", "nginx-proxy"),
        ("post", "gateway"),
    ]


def test_ratios_divide_gateway_by_nginx_proxy_and_direct_per_workload() -> None:
    ms = [
        Measurement("direct", "get", 0, _result(60000)),
        Measurement("nginx-proxy", "get", 0, _result(50000)),
        Measurement("gateway", "get", 0, _result(10000)),
        Measurement("nginx-proxy", "post", 0, _result(40000)),
        Measurement("gateway", "post", 0, _result(4000)),
    ]
    s = summarize(ms)
    assert ratio(s, "get", "gateway", "nginx-proxy") == pytest.approx(0.2)
    assert ratios(s) == {
        "get: gateway/nginx-proxy": pytest.approx(0.2),
        "get: gateway/direct": pytest.approx(1 / 6),
        "post: gateway/nginx-proxy": pytest.approx(0.1),
    }


def test_ratio_is_none_when_a_configuration_is_missing_or_zero() -> None:
    s = summarize(
        [Measurement("nginx-proxy", "get", 0, _result(0.0)), Measurement("gateway", "get", 0, _result(5))]
    )
    assert ratio(s, "get", "gateway", "nginx-proxy") is None
    assert ratio(s, "get", "gateway", "direct") is None
    assert ratios(s) == {}


def test_format_table_shows_every_configuration_with_its_ratio() -> None:
    ms = [
        Measurement("nginx-proxy", "get", 0, _result(50000)),
        Measurement("gateway", "get", 0, _result(10000), cpu_s=1.0),
    ]
    lines = format_table(summarize(ms)).splitlines()
    assert lines[0].split()[:3] == ["workload", "config", "req/s"]
    gw = next(line for line in lines if "gateway" in line)
    assert "10,000" in gw
    assert "0.200" in gw
    assert "1000" in gw  # CPU: 1 s over 1000 requests


def test_parse_proc_stat_handles_spaces_and_parentheses_in_the_command_name() -> None:
    stat = "4242 (my (odd) proc) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 12345 0 0"
    assert parse_stat_cpu(stat) == 325
    assert parse_stat_ppid(stat) == 17


def test_parse_vmrss_reads_kib_and_defaults_to_zero() -> None:
    status = "Name:\tpython\nVmPeak:\t  200000 kB\nVmRSS:\t   51234 kB\nThreads:\t3\n"
    assert parse_vmrss_kib(status) == 51234
    assert parse_vmrss_kib("Name:\tzombie\n") == 0


def test_render_fails_on_an_unfilled_placeholder() -> None:
    with pytest.raises(ValueError, match="PORT2"):
        nginx.render("listen @PORT1@; listen @PORT2@; error_page 404 @ok;", {"PORT1": 1})


@pytest.mark.parametrize("which", ["backend", "proxy"])
def test_generated_nginx_configs_pass_nginx_t(tmp_path: Path, which: str) -> None:
    path = (
        nginx.backend_config(tmp_path, 40101, 40102)
        if which == "backend"
        else nginx.proxy_config(tmp_path, 40100, 40101, 40102)
    )
    text = path.read_text()
    assert "40101" in text and "40102" in text
    assert nginx.PLACEHOLDER.search(text) is None
    done = subprocess.run(
        [find_binary("nginx"), "-t", "-e", str(tmp_path / "error.log"), "-p", str(tmp_path), "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_percentile_uses_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 99) == 3.0
    assert percentile([], 50) == float("inf")


def test_stream_chunks_add_up_to_the_size_and_differ_from_each_other() -> None:
    size = 3 * CHUNK + 100
    parts = list(chunks(size))
    assert [len(p) for p in parts] == [CHUNK, CHUNK, CHUNK, 100]
    assert len({p[:8] for p in parts}) == 4
    assert stream_sha256(size) == hashlib.sha256(b"".join(parts)).hexdigest()


def test_rss_sampler_sees_a_process_grow_by_more_than_the_limit() -> None:
    with RssSampler(os.getpid(), interval=0.01) as sampler:
        before = sampler.current()
        block = bytearray(RSS_LIMIT + 16 * 1024 * 1024)  # zero-filled: the kernel commits it on write
        block[::4096] = b"\x01" * len(block[::4096])
        deadline = time.monotonic() + 5
        while sampler.peak - before < RSS_LIMIT and time.monotonic() < deadline:
            time.sleep(0.01)
        del block
    assert sampler.samples >= 1
    assert sampler.peak - before >= RSS_LIMIT


def test_cpu_ratio_divides_nginx_cpu_per_request_by_the_gateways() -> None:
    ms = [
        Measurement("nginx-proxy", "get", 0, _result(50000, requests=100_000), cpu_s=2.0),  # 20 us/req
        Measurement("gateway", "get", 0, _result(5000, requests=10_000), cpu_s=2.0),  # 200 us/req
        Measurement("gateway", "post", 0, _result(5000, requests=10_000), cpu_s=None),
    ]
    assert cpu_ratios(summarize(ms)) == {"get: nginx-proxy CPU/req over gateway CPU/req": pytest.approx(0.1)}


def test_parse_env_splits_on_the_first_equals_and_rejects_a_bare_word() -> None:
    assert gateway.parse_env(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(SystemExit):
        gateway.parse_env(["NOEQUALS"])


def test_generated_gateway_config_is_valid_for_the_gateway_settings() -> None:
    from msa_gateway.settings import parse_config

    doc = gateway.gateway_config([40101, 40102], read_timeout=300.0)
    cfg = parse_config(doc, "bench")
    svc = cfg.services["bench"]
    assert [(i.host, i.port) for i in svc.instances] == [("127.0.0.1", 40101), ("127.0.0.1", 40102)]
    assert svc.options.health_check.path == "/health"
    assert svc.options.timeouts.read == 300.0


def test_summary_reports_the_worst_runs_foreign_cpu_use() -> None:
    ms = [
        Measurement("gateway", "get", 0, _result(1000), other_cores=0.05),
        Measurement("gateway", "get", 1, _result(1000), other_cores=0.60),
        Measurement("gateway", "get", 2, _result(1000), other_cores=None),
    ]
    [s] = summarize(ms)
    assert s.other_cores == pytest.approx(0.60)
    assert "0.60" in format_table([s])
