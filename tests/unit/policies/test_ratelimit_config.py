"""Parsing of the ``rate_limit`` block (every mistake names its key), and the Redis keys and answers it leads to."""

from __future__ import annotations

import time
from typing import Any

import pytest
from redis.asyncio import Redis

from msa_gateway.errors import ConfigError
from msa_gateway.policies import ratelimit_limiter
from msa_gateway.policies.base import PolicyError
from msa_gateway.policies.gcra import Decision, Limit
from msa_gateway.policies.ratelimit_config import parse
from msa_gateway.policies.ratelimit_limiter import Limiter, redis_key_part
from msa_gateway.policies.ratelimit_redis import RedisBackend, parse_answer, script_args
from msa_gateway.policies.redis_wire import pack
from msa_gateway.settings import parse_config
from msa_gateway.tasks import Supervisor


def test_a_full_block_parses_into_limits_key_and_backend() -> None:
    config = parse(
        {
            "name": "per-ip",
            "key": "header:X-Client-Id",
            "limits": ["100/second", {"rate": "5000/hour", "burst": 10}, "2/min"],
            "backend": "redis",
            "on_backend_error": "deny",
            "backend_timeout": 0.02,
            "sync_interval": 0.1,
        }
    )
    assert config.limits == (
        Limit(100, 1.0, 99, "100/second"),
        Limit(5000, 3600.0, 10, "5000/hour"),
        Limit(2, 60.0, 1, "2/min"),
    )
    assert (config.name, config.key, config.header) == ("per-ip", "header", b"x-client-id")
    assert (config.backend, config.on_backend_error, config.backend_timeout) == ("redis", "deny", 0.02)
    assert config.sync_interval == 0.1 and hash(config)


def test_defaults_are_local_per_ip_and_local_on_backend_error() -> None:
    config = parse({"limits": ["10/s"]})
    assert (config.name, config.key, config.backend, config.on_backend_error) == (
        "default",
        "ip",
        "local",
        "local",
    )
    assert config.sync_interval is None and config.backend_timeout == 0.2


@pytest.mark.parametrize(
    ("block", "key"),
    [
        ({}, "limits"),
        ({"limits": []}, "limits"),
        ({"limits": ["100/fortnight"]}, "limits.0.rate"),
        ({"limits": ["0/second"]}, "limits.0.rate"),
        ({"limits": [{"burst": 3}]}, "limits.0.rate"),
        ({"limits": [{"rate": "1/s", "burst": -1}]}, "limits.0.burst"),
        ({"limits": [{"rate": "1/s", "brust": 1}]}, "limits.0.brust"),
        ({"limits": ["1/s"], "key": "cookie"}, "key"),
        ({"limits": ["1/s"], "key": "header:bad header"}, "key"),
        ({"limits": ["1/s"], "backend": "memcached"}, "backend"),
        ({"limits": ["1/s"], "on_backend_error": "panic"}, "on_backend_error"),
        ({"limits": ["1/s"], "backend_timeout": 30}, "backend_timeout"),
        ({"limits": ["1/s"], "sync_interval": 0.1}, "sync_interval"),
        ({"limits": ["1/s"], "name": "Has Spaces"}, "name"),
        ({"limits": ["1/s"], "window": 3}, "window"),
    ],
)
def test_mistakes_name_their_key(block: dict[str, Any], key: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse(block)
    assert info.value.key == key


def test_a_bad_block_in_the_file_fails_start_up_with_file_and_key() -> None:
    data = {"services": {"orders": {"policies": {"rate_limit": {"limits": ["5/lightyear"]}}}}}
    with pytest.raises(ConfigError) as info:
        parse_config(data, "gw.yaml")
    assert (info.value.source, info.value.key) == (
        "gw.yaml",
        "services.orders.policies.rate_limit.limits.0.rate",
    )


def test_plain_short_key_values_stay_readable_in_redis_and_others_are_hashed() -> None:
    assert redis_key_part("ip:203.0.113.7") == "ip:203.0.113.7"
    assert redis_key_part("ip:2001:db8::1") == "ip:2001:db8::1"
    hashed = redis_key_part("h:tenant}{evil")
    assert hashed.startswith("h:") and len(hashed) == 42 and "}" not in hashed
    assert redis_key_part("c:" + "x" * 100) != redis_key_part("c:" + "x" * 101)
    for unsafe in ("h:a b", "c:é", "h:a\x00", "h:*"):
        assert redis_key_part(unsafe).startswith("h:") and len(redis_key_part(unsafe)) == 42
    assert redis_key_part("c:" + "x" * 62) == "c:" + "x" * 62  # 64 bytes: still as is


def test_the_scripts_answer_becomes_a_decision_for_one_limit_and_for_several() -> None:
    one = parse_answer([1, 0, 4, 12_000_000])
    assert one == Decision(True, 0.0, (4,), (12.0,)) and type(one) is Decision
    refused = parse_answer([0, 2_500_000, 0, 60_000_000])
    assert refused == Decision(False, 2.5, (0,), (60.0,))
    two = parse_answer([1, 0, 4, 12_000_000, 99, 1_500_000])
    assert two == Decision(True, 0.0, (4, 99), (12.0, 1.5))


def test_redis_calls_are_packed_once_per_key_and_forgotten_past_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = parse({"backend": "redis", "limits": ["5/minute", "100/hour"]})
    backend = RedisBackend(Redis(port=1), 0.1, time.monotonic, lambda up: None)
    limiter = Limiter(config, "svc", backend, time.monotonic, Supervisor())
    keys = limiter.keys("ip:203.0.113.7")
    assert keys == ["rl:{svc:default:ip:203.0.113.7}:0", "rl:{svc:default:ip:203.0.113.7}:1"]
    first = limiter.command("ip:203.0.113.7")
    assert first == pack("EVALSHA", backend.sha, 2, *keys, *script_args(config.limits))
    assert limiter.command("ip:203.0.113.7") is first
    monkeypatch.setattr(ratelimit_limiter, "MAX_KNOWN_KEYS", 3)
    for i in range(7):
        assert f"rl:{{svc:default:k{i}}}:0".encode() in limiter.command(f"k{i}")
        assert len(limiter.commands) <= 3
