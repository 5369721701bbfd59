"""``WORKERS`` and ``SHARED_HEALTH_HINTS``: accepted values and start-up errors that name the variable."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from msa_gateway.settings import Settings, env_error
from msa_gateway.workers.link import WorkerEnv


def settings(**env: str) -> Settings:
    return Settings(_env_file=None, **env)  # type: ignore[call-arg,arg-type]


def test_workers_default_one_and_auto_is_the_usable_cores() -> None:
    assert settings().workers == 1
    assert settings(workers="auto").workers == len(os.sched_getaffinity(0))
    assert settings(workers="3").workers == 3


@pytest.mark.parametrize("value", ["0", "-1", "many", "257"])
def test_bad_workers_name_the_variable(value: str) -> None:
    with pytest.raises(ValidationError) as info:
        settings(workers=value)
    assert env_error(info.value).startswith("environment: WORKERS: ")


def test_shared_hints_need_a_redis_or_etcd_registry() -> None:
    with pytest.raises(ValidationError) as info:
        settings(shared_health_hints="true")
    message = env_error(info.value)
    assert message.startswith("environment: SHARED_HEALTH_HINTS: ")
    assert "redis or etcd" in message
    assert settings(shared_health_hints="true", service_discovery_type="redis").shared_health_hints
    assert settings(shared_health_hints="true", service_discovery_type="etcd").shared_health_hints


def test_worker_identity_comes_from_the_supervisors_environment() -> None:
    assert WorkerEnv.from_environ({}) is None
    env = {"MSA_GATEWAY_WORKER": "1/4", "MSA_GATEWAY_WORKER_FD": "7", "MSA_GATEWAY_HUB": "/tmp/x.sock"}
    worker = WorkerEnv.from_environ(env)
    assert worker == WorkerEnv(index=1, count=4, fd=7, hub="/tmp/x.sock")
    assert not worker.probes
    assert WorkerEnv(0, 4, 7, "/tmp/x.sock").probes
