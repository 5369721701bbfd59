"""The real ``msa-gateway`` process: start-up errors, check-config, JSON logs, secrets kept out of logs."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import orjson
import pytest

from msa_gateway.settings import Settings
from tests.support.gateway import gateway_process
from tests.support.procs import PY, REPO, free_port, python_env, wait_port
from tests.support.recorder import RecorderThread, Reply
from tests.support.seed import env_blocks, seed_text


def _run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "msa_gateway.cli", *args],
        env=env or python_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_check_config_accepts_good_and_rejects_bad_file(tmp_path: Path) -> None:
    good = _run("check-config", "examples/gateway.yaml")
    assert good.returncode == 0, good.stderr
    assert "ok" in good.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("services:\n  health:\n    instances: []\n")
    res = _run("check-config", str(bad))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines == [
        f"msa-gateway: config error: {bad}: services.health: 'health' is a gateway endpoint and cannot be a service name"
    ]


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("services:\n  a:\n    instances: [{host: h, port: 99999}]\n", "services.a.instances.0.port"),
        ("servicez: {}\n", "servicez"),
        ("services:\n  a:\n    timeouts: {read: fast}\n", "services.a.timeouts.read"),
    ],
)
def test_run_with_bad_config_exits_non_zero_with_one_line(tmp_path: Path, yaml_text: str, key: str) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(yaml_text)
    res = _run("run", env=python_env(GATEWAY_CONFIG=str(cfg), PORT=str(free_port()), HOST="127.0.0.1"))
    assert res.returncode != 0
    assert res.stderr.strip().count("\n") == 0, res.stderr
    assert f"{cfg}: {key}: " in res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_bad_environment_is_one_line() -> None:
    res = _run("run", env=python_env(PORT="not-a-port"))
    assert res.returncode != 0
    assert res.stderr.strip().startswith("msa-gateway: environment: PORT: ")
    assert res.stderr.strip().count("\n") == 0


def test_uvicorn_import_path_reports_config_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("services: [1, 2]\n")
    res = subprocess.run(
        [PY, "-c", "import msa_gateway.main"],
        env=python_env(GATEWAY_CONFIG=str(cfg)),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 2
    assert res.stderr.strip().startswith(f"msa-gateway: config error: {cfg}: services: ")


def test_every_log_line_is_json_and_secrets_never_appear() -> None:
    with RecorderThread(Reply(200, body=b"ok")) as rec:
        config = {
            "services": {
                "svc": {
                    "instances": [{"host": "127.0.0.1", "port": rec.port}],
                    "health_check": {"path": None},
                }
            }
        }
        with gateway_process(config) as gw:
            req = urllib.request.Request(
                f"{gw.url}/svc/private?token=s3cr3t-query",
                headers={
                    "Authorization": "Bearer s3cr3t-token",
                    "Cookie": "sid=s3cr3t-cookie",
                    "X-Request-ID": "trace-1",
                },
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 200
            gw.terminate()
            out = gw.output()
    lines = [line for line in out.splitlines() if line.strip()]
    docs = [orjson.loads(line) for line in lines]  # every line parses as JSON
    for doc in docs:
        assert {"timestamp", "level", "logger", "event"} <= set(doc)
    access = [d for d in docs if d["logger"] == "msa_gateway.access"]
    assert len(access) == 1
    line = access[0]
    assert {k: line[k] for k in ("method", "path", "status", "request_id", "service")} == {
        "method": "GET",
        "path": "/svc/private",
        "status": 200,
        "request_id": "trace-1",
        "service": "svc",
    }
    assert line["instance"] == f"127.0.0.1:{rec.port}" and line["bytes"] == 2 and line["duration_ms"] >= 0
    assert any(d["event"] == "registry updated" for d in docs)
    assert "s3cr3t" not in out


def test_debug_gives_readable_console_lines() -> None:
    with RecorderThread(Reply(200, body=b"ok")) as rec:
        config = {
            "services": {
                "svc": {
                    "instances": [{"host": "127.0.0.1", "port": rec.port}],
                    "health_check": {"path": None},
                }
            }
        }
        with gateway_process(config, DEBUG="true") as gw:
            with urllib.request.urlopen(f"{gw.url}/svc/x", timeout=10) as resp:
                assert resp.status == 200
            gw.terminate()
            out = gw.output()
    access = [line for line in out.splitlines() if "msa_gateway.access" in line]
    assert len(access) == 1
    assert not access[0].startswith("{")
    assert "status=200" in access[0]


def test_sigterm_exits_zero() -> None:
    with gateway_process({"services": {}}) as gw:
        assert gw.terminate() == 0


def test_gateway_starts_from_the_seeds_env_file_copied_verbatim(tmp_path: Path) -> None:
    """The seed's ``.env`` block (``SERVICE_DISCOVERY_TYPE=static  # consul, redis, static``) in the cwd.

    PORT comes from the environment (which wins over ``.env``) so the test does not need port 8000.
    """
    (tmp_path / ".env").write_text(env_blocks(seed_text())[0] + "\n", encoding="utf-8")
    port = free_port()
    env = {k: v for k, v in python_env().items() if k.lower() not in Settings.model_fields}
    env["PORT"] = str(port)
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [PY, "-m", "msa_gateway.cli", "run"], env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_port(port, timeout=20, proc=proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
            about = orjson.loads(resp.read())
        assert about["discovery"] == "static"
        assert about["services"] == 2  # the embedded registry: user-service and order-service
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert lines and all(line.startswith("{") for line in lines)  # DEBUG=false: JSON lines
