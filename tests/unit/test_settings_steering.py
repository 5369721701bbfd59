"""``balancer_options:`` and ``websocket:`` blocks: parsed into frozen options; mistakes name file, key and reason."""

from __future__ import annotations

import pytest

from msa_gateway.errors import ConfigError
from msa_gateway.model import BalancerOptions, WebSocketConfig
from msa_gateway.settings import parse_config


def test_blocks_parse_into_the_service_options() -> None:
    cfg = parse_config(
        {
            "defaults": {"websocket": {"idle_timeout": 60}},
            "services": {
                "svc": {
                    "balancer": "consistent_hash",
                    "balancer_options": {"hash_key": "header:X-User", "virtual_nodes": 100},
                }
            },
        },
        "gw.yaml",
    )
    options = cfg.services["svc"].options
    assert options.balancer == "consistent_hash"
    assert options.balancer_options == BalancerOptions(hash_key="header:X-User", virtual_nodes=100)
    assert options.websocket == WebSocketConfig(idle_timeout=60)  # from defaults


@pytest.mark.parametrize(
    ("block", "key", "reason"),
    [
        ({"balancer": "nope"}, "services.svc.balancer", "unknown balancer 'nope'"),
        (
            {"balancer_options": {"hash_key": "query:x"}},
            "services.svc.balancer_options.hash_key",
            "client_ip or path",
        ),
        (
            {"balancer_options": {"hash_key": "header:"}},
            "services.svc.balancer_options.hash_key",
            "needs a valid name",
        ),
        (
            {"balancer_options": {"cookie": "a;b"}},
            "services.svc.balancer_options.cookie",
            "not a valid cookie name",
        ),
        ({"balancer_options": {"decay": 0}}, "services.svc.balancer_options.decay", "greater than 0"),
        (
            {"balancer_options": {"virtual_nodes": 0}},
            "services.svc.balancer_options.virtual_nodes",
            "greater than or equal to 1",
        ),
        ({"balancer_options": {"salt": 1}}, "services.svc.balancer_options.salt", "unknown key"),
        (
            {"websocket": {"max_connections": 0}},
            "services.svc.websocket.max_connections",
            "greater than or equal to 1",
        ),
        ({"websocket": {"idle_timeout": -1}}, "services.svc.websocket.idle_timeout", "greater than 0"),
    ],
)
def test_mistakes_name_file_key_and_reason(block: dict[str, object], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"services": {"svc": block}}, "gw.yaml")
    text = str(info.value)
    assert text.startswith(f"gw.yaml: {key}: ") and reason in text, text
