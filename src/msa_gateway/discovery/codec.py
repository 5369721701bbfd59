"""The instance record: one set of rules for every place an instance is read or written.

A record is the JSON object (or YAML mapping) that describes one instance::

    {"host": "10.0.0.5",          required: host name, IPv4 or IPv6 address (brackets optional)
     "port": 8001,                required: integer 1-65535
     "id": "orders-1",            optional: default host:port ([v6]:port); a registry key naming
                                  the instance (Redis hash field, etcd key) takes precedence
     "weight": 1,                 optional: integer 1-1000
     "health_path": "/health",    optional: null or a path starting with "/"
     "metadata": {"zone": "a"},   optional: at most 64 pairs, keys 1-128 characters, values
                                  strings up to 512 characters; numbers and booleans are
                                  accepted and stored as strings (1.5 -> "1.5", true -> "true")
     "scheme": "http"}            optional: only "http"

The static YAML file, Redis, etcd, the admin API and ``msa-gateway register`` all decode through
``decode_record``, so a record accepted in one place is accepted everywhere with the same result
(Consul's own format goes through the same host, port, id and metadata rules). Records read from
a registry ignore unknown fields, so newer writers can add some; the YAML file and the admin API
reject them, where an unknown field is a typo. ``encode`` writes what ``decode`` reads back.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import re
from typing import Any, Literal

import orjson

from msa_gateway.model import Instance

MAX_TTL = 366 * 86400.0
MAX_WEIGHT = 1000
MAX_METADATA_PAIRS = 64
MAX_METADATA_KEY = 128
MAX_METADATA_VALUE = 512
FIELDS = frozenset({"id", "host", "port", "weight", "health_path", "metadata", "scheme"})
INSTANCE_ID_RE = re.compile(r"^[^\s/\x00-\x1f\x7f]{1,256}$")
HOST_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,252})$")


class RecordError(ValueError):
    """An instance record is invalid: ``field`` (dotted, "" for the whole record) and ``reason``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


def _show(value: object) -> str:
    """Render a rejected value the way the user wrote it (JSON spelling), shortened."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def validate_instance_id(instance_id: str) -> str | None:
    """Return why ``instance_id`` cannot be an instance id, or None when it can."""
    if not INSTANCE_ID_RE.match(instance_id):
        return "instance ids are 1-256 characters without whitespace, control characters or '/'"
    return None


def valid_host(value: object) -> str:
    """Return ``value`` as a bare host name or IP (brackets dropped); raise ``RecordError`` if it is not."""
    if value is None:
        raise RecordError("host", "missing")
    if not isinstance(value, str) or not value:
        raise RecordError("host", f"must be a non-empty string, not {_show(value)}")
    if HOST_RE.match(value):
        return value
    host = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if ":" in host:
        with contextlib.suppress(ValueError):
            ipaddress.IPv6Address(host)
            return host
    raise RecordError("host", f"{_show(value)} is not a bare host name or IP address")


def _integer(field: str, value: object, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RecordError(field, f"must be an integer {low}-{high}, not {_show(value)}")
    return value


def valid_port(value: object) -> int:
    """Return ``value`` if it is an integer port 1-65535; raise ``RecordError`` saying why not."""
    if value is None:
        raise RecordError("port", "missing")
    return _integer("port", value, 1, 65535)


def default_id(host: str, port: int) -> str:
    """Return the id an instance gets when none is given: ``host:port`` (``[v6]:port``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def metadata_value(key: str, value: object) -> str:
    """Return one metadata value as a string: strings as they are, numbers and booleans stringified."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        raise RecordError(f"metadata.{key}", f"must be a string, number or boolean, not {_show(value)}")
    if len(text) > MAX_METADATA_VALUE:
        raise RecordError(f"metadata.{key}", f"longer than {MAX_METADATA_VALUE} characters")
    return text


def valid_metadata(raw: object) -> tuple[tuple[str, str], ...]:
    """Return metadata as sorted string pairs; raise ``RecordError`` naming the bad key."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise RecordError("metadata", f"must be an object, not {_show(raw)}")
    if len(raw) > MAX_METADATA_PAIRS:
        raise RecordError("metadata", f"at most {MAX_METADATA_PAIRS} pairs, not {len(raw)}")
    pairs: list[tuple[str, str]] = []
    for key, value in raw.items():
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_METADATA_KEY:
            raise RecordError("metadata", f"keys are strings of 1-{MAX_METADATA_KEY} characters, not {key!r}")
        pairs.append((key, metadata_value(key, value)))
    return tuple(sorted(pairs))


def _health_path(value: object) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.startswith("/")):
        raise RecordError("health_path", f"must be null or start with '/', not {_show(value)}")
    return value


def decode_record(
    doc: object,
    *,
    source: str,
    instance_id: str | None = None,
    unknown: Literal["ignore", "reject"] = "ignore",
) -> Instance:
    """Return the ``Instance`` a record describes; raise ``RecordError`` naming the field and the reason.

    ``instance_id`` is the id the registry's key gives (it wins over the record's ``id``).
    """
    if not isinstance(doc, dict):
        raise RecordError("", f"expected an object, not {_show(doc)}")
    if unknown == "reject":
        extra = sorted(str(k) for k in doc if k not in FIELDS)
        if extra:
            raise RecordError(extra[0], "unknown field")
    host = valid_host(doc.get("host"))
    port = valid_port(doc.get("port"))
    if instance_id is None:
        given = doc.get("id")
        if given is not None and not isinstance(given, str):
            raise RecordError("id", f"must be a string, not {_show(given)}")
        instance_id = default_id(host, port) if given is None else given
    why = validate_instance_id(instance_id)
    if why:
        raise RecordError("id", f"{instance_id!r}: {why}")
    scheme = doc.get("scheme", "http")
    if scheme != "http":
        raise RecordError("scheme", f"only 'http' is supported, not {_show(scheme)}")
    return Instance(
        id=instance_id,
        host=host,
        port=port,
        weight=_integer("weight", doc.get("weight", 1), 1, MAX_WEIGHT),
        health_path=_health_path(doc.get("health_path")),
        metadata=valid_metadata(doc.get("metadata")),
        source=source,
    )


def decode(raw: str | bytes, *, source: str, instance_id: str | None = None) -> Instance:
    """Decode a JSON record as read from a registry (unknown fields ignored)."""
    try:
        doc: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RecordError("", f"malformed JSON ({exc})") from None
    return decode_record(doc, source=source, instance_id=instance_id)


def to_record(instance: Instance) -> dict[str, Any]:
    """Return the record of ``instance`` (every field, so readers need no defaults)."""
    return {
        "id": instance.id,
        "host": instance.host,
        "port": instance.port,
        "weight": instance.weight,
        "metadata": dict(instance.metadata),
        "health_path": instance.health_path,
        "scheme": instance.scheme,
    }


def encode(instance: Instance) -> bytes:
    """Return the JSON record ``decode`` reads back as ``instance``."""
    return orjson.dumps(to_record(instance))


def normalize(instance: Instance) -> Instance:
    """Return ``instance`` as a registry would read it back; raise ``RecordError`` if it would skip it.

    Registrars call this before writing, so nothing is written that gateways would then ignore.
    """
    return decode_record(to_record(instance), source=instance.source)


def check_ttl(ttl: float) -> float:
    """Return ``ttl`` if it is a registration lifetime (0.001 s to 366 days, or inf = never expires)."""
    if math.isinf(ttl) and ttl > 0:
        return ttl
    if not (0.001 <= ttl <= MAX_TTL):
        raise ValueError(f"ttl must be between 0.001 and {MAX_TTL:.0f} seconds (or inf), not {ttl}")
    return ttl
