"""Settings and YAML validation: every mistake names file, key and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from msa_gateway.errors import ConfigError
from msa_gateway.settings import EMBEDDED_CONFIG, Settings, env_error, load_config, parse_config


def _err(data: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "gw.yaml")
    return info.value


def test_embedded_default_loads() -> None:
    cfg = load_config(None)
    assert cfg.source == EMBEDDED_CONFIG
    assert set(cfg.services) == {"user-service", "order-service"}
    assert len(cfg.services["user-service"].instances) == 2


def test_valid_file_with_defaults_and_overrides() -> None:
    cfg = parse_config(
        {
            "gateway": {"trusted_proxies": ["10.0.0.0/8"]},
            "defaults": {"timeouts": {"connect": 1, "read": 5}},
            "services": {
                "a": {
                    "instances": [{"host": "10.0.0.1", "port": 80, "weight": 3, "metadata": {"zone": "x"}}]
                },
                "b": {"timeouts": {"read": 9}, "health_check": {"path": None}, "balancer": "least_request"},
            },
        },
        "gw.yaml",
    )
    assert cfg.services["a"].options.timeouts.read == 5
    assert cfg.services["b"].options.timeouts.read == 9
    assert (
        cfg.services["b"].options.timeouts.connect == 2.0
    )  # a service block replaces the whole timeouts block
    assert cfg.services["b"].options.health_check.path is None
    assert cfg.services["a"].instances[0].metadata == (("zone", "x"),)
    assert cfg.options_for("unknown").timeouts.read == 5
    assert str(cfg.trusted_proxies[0]) == "10.0.0.0/8"


@pytest.mark.parametrize(
    ("data", "key", "reason"),
    [
        ({"servics": {}}, "servics", "unknown key"),
        (
            {"services": {"a": {"instances": [{"host": "h", "port": 0}]}}},
            "services.a.instances.0.port",
            "must be an integer 1-65535, not 0",
        ),
        (
            {"services": {"a": {"instances": [{"host": "h", "port": 70000}]}}},
            "services.a.instances.0.port",
            "must be an integer 1-65535, not 70000",
        ),
        (
            {"services": {"a": {"instances": [{"host": "h", "port": "x"}]}}},
            "services.a.instances.0.port",
            "integer",
        ),
        ({"services": {"a": {"instances": [{"port": 1}]}}}, "services.a.instances.0.host", "missing"),
        (
            {"services": {"a": {"instances": [{"host": "h/x", "port": 1}]}}},
            "services.a.instances.0.host",
            "bare host",
        ),
        ({"services": {"a": {"timeouts": {"read": -1}}}}, "services.a.timeouts.read", "greater"),
        ({"services": {"a": {"balancer": "magic"}}}, "services.a.balancer", "round_robin"),
        ({"services": {"health": {}}}, "services.health", "gateway endpoint"),
        ({"services": {"metrics": {}}}, "services.metrics", "gateway endpoint"),
        ({"services": {"docs": {}}}, "services.docs", "gateway endpoint"),
        ({"services": {"bad name": {}}}, "services.bad name", "letters, digits"),
        (
            {"services": {"a": {"health_check": {"path": "health"}}}},
            "services.a.health_check.path",
            "start with",
        ),
        ({"gateway": {"trusted_proxies": ["nope"]}}, "gateway.trusted_proxies", "not an IP network"),
        (
            {"services": {"a": {"instances": [{"host": "h", "port": 1}, {"host": "h", "port": 1}]}}},
            "services.a.instances.1",
            "duplicate",
        ),
        (["a"], "(top level)", "mapping"),
    ],
)
def test_mistakes_name_file_key_and_reason(data: object, key: str, reason: str) -> None:
    err = _err(data)
    assert err.source == "gw.yaml"
    assert err.key == key
    assert reason in err.reason
    assert str(err).startswith(f"gw.yaml: {key}: ")
    assert "\n" not in str(err)


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("services:\n  a: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(p))
    assert str(info.value).startswith(f"{p}: line ")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_config(str(tmp_path / "missing.yaml"))


def test_env_settings_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9000")
    monkeypatch.setenv("SERVICE_DISCOVERY_TYPE", "redis")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (s.port, s.service_discovery_type, s.host) == (9000, "redis", "0.0.0.0")
    monkeypatch.setenv("PORT", "99999")
    with pytest.raises(Exception) as info:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert env_error(info.value).startswith("environment: PORT: ")
    monkeypatch.setenv("PORT", "80")
    monkeypatch.setenv("SERVICE_DISCOVERY_TYPE", "zookeeper")
    with pytest.raises(Exception) as info:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert env_error(info.value).startswith("environment: SERVICE_DISCOVERY_TYPE: ")


def test_busy_poll_is_off_by_default_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(_env_file=None).busy_poll_us == 0  # type: ignore[call-arg]
    monkeypatch.setenv("BUSY_POLL_US", "100")
    assert Settings(_env_file=None).busy_poll_us == 100  # type: ignore[call-arg]
    for bad in ("-1", "1000001", "fast"):
        monkeypatch.setenv("BUSY_POLL_US", bad)
        with pytest.raises(Exception) as info:
            Settings(_env_file=None)  # type: ignore[call-arg]
        assert env_error(info.value).startswith("environment: BUSY_POLL_US: "), bad


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("PORT=8123\nDEBUG=true\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PORT", raising=False)
    s = Settings()
    assert s.port == 8123 and s.debug is True
