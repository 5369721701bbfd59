"""The ``rate_limit`` block: limits, the key requests are counted by, the backend and its failure mode.

```yaml
rate_limit:
  name: per-ip                 # names the buckets, the metric's policy label and the headers
  key: ip                      # ip | consumer | route | header:X-Client-Id
  limits:
    - {rate: 100/second, burst: 20}
    - 5000/hour                # burst defaults to count - 1: the whole quota may come at once
  backend: redis               # local (default) | redis
  on_backend_error: local      # allow | deny | local (default)
  backend_timeout: 0.2         # seconds a decision may wait for Redis
  sync_interval: 0.1           # redis only, optional: local pre-check, synchronised this often
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from msa_gateway.policies.base import PolicyError
from msa_gateway.policies.gcra import MAX_KEYS, Limit
from msa_gateway.policies.parsing import block, header_name, number

KEYS = {
    *("name", "key", "limits", "backend", "on_backend_error", "backend_timeout", "sync_interval", "max_keys")
}
UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
ALIASES = {"s": "second", "sec": "second", "m": "minute", "min": "minute", "h": "hour", "d": "day"}
RATE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+?)s?\s*$")
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}$")
BACKENDS = ("local", "redis")
ON_ERROR = ("allow", "deny", "local")
# Seconds a decision may wait for Redis. Redis answers in well under a millisecond; what the
# timeout must survive is a gateway or a Redis starved of CPU for tens of milliseconds (0.05 s
# tripped on a busy 2-core machine). Twice this (a starved loop's second chance) stays under the
# 1 s within which the configured failure mode must apply. Kong waits 2 s, APISIX 1 s, Envoy's
# rate-limit filter 20 ms (for a dedicated service); see docs/ratelimit.md.
BACKEND_TIMEOUT = 0.2


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """The parsed ``rate_limit`` block."""

    name: str
    key: str  # "ip", "consumer", "route" or "header"
    header: bytes | None  # the header's name for key "header"
    limits: tuple[Limit, ...]
    backend: str
    on_backend_error: str
    backend_timeout: float
    sync_interval: float | None
    max_keys: int


def parse_rate(raw: Any, key: str) -> tuple[int, float]:
    """Return ``(count, period)`` of ``"100/second"`` (second, minute, hour, day; s, m, h, d)."""
    match = RATE.match(raw) if isinstance(raw, str) else None
    unit = ALIASES.get(match.group(2), match.group(2)) if match else ""
    if match is None or unit not in UNITS or int(match.group(1)) < 1:
        raise PolicyError(key, f"{raw!r} is not a rate like 100/second, 60/minute, 5000/hour or 1000/day")
    return int(match.group(1)), UNITS[unit]


def _limit(raw: Any, key: str) -> Limit:
    if isinstance(raw, str):
        raw = {"rate": raw}
    data = block(raw, {"rate", "burst"}, key)
    if "rate" not in data:
        raise PolicyError(f"{key}.rate", "required, e.g. 100/second")
    count, period = parse_rate(data["rate"], f"{key}.rate")
    burst = number(data.get("burst", count - 1), f"{key}.burst", 0, 1_000_000_000)
    return Limit(count, period, burst, str(data["rate"]).replace(" ", ""))


def _seconds(raw: Any, key: str, low: float, high: float) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not low <= raw <= high:
        raise PolicyError(key, f"must be a number of seconds {low}-{high}")
    return float(raw)


def _choice(raw: Any, key: str, options: tuple[str, ...]) -> str:
    if raw not in options:
        raise PolicyError(key, f"must be one of {', '.join(options)}")
    return str(raw)


def parse(raw: Any) -> RateLimitConfig:
    """Parse the ``rate_limit`` block."""
    data = block(raw, KEYS)
    limits = data.get("limits")
    if not isinstance(limits, list) or not limits:
        raise PolicyError("limits", "required: a list of rates like 100/second (each with an optional burst)")
    name = data.get("name", "default")
    if not isinstance(name, str) or not NAME.match(name):
        raise PolicyError("name", "must be 1-40 lower-case letters, digits, '_', '.' or '-'")
    kind, header = _key(data.get("key", "ip"))
    backend = _choice(data.get("backend", "local"), "backend", BACKENDS)
    sync = data.get("sync_interval")
    if sync is not None:
        if backend != "redis":
            raise PolicyError("sync_interval", "only with backend: redis (local is exact already)")
        sync = _seconds(sync, "sync_interval", 0.01, 10)
    return RateLimitConfig(
        name=name,
        key=kind,
        header=header,
        limits=tuple(_limit(item, f"limits.{i}") for i, item in enumerate(limits)),
        backend=backend,
        on_backend_error=_choice(data.get("on_backend_error", "local"), "on_backend_error", ON_ERROR),
        backend_timeout=_seconds(data.get("backend_timeout", BACKEND_TIMEOUT), "backend_timeout", 0.001, 5),
        sync_interval=sync,
        max_keys=number(data.get("max_keys", MAX_KEYS), "max_keys", 1, 10_000_000),
    )


def _key(raw: Any) -> tuple[str, bytes | None]:
    if raw in ("ip", "consumer", "route"):
        return str(raw), None
    if isinstance(raw, str) and raw.startswith("header:"):
        return "header", header_name(raw[len("header:") :].strip(), "key")
    raise PolicyError("key", "must be ip, consumer, route or header:<Header-Name>")
