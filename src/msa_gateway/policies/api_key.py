"""``api_key``: a key from a header or query parameter, looked up by its SHA-256 among known consumers.

Keys come from an environment variable or a file (``consumer:key`` entries), or inline as
SHA-256 hashes only: a plaintext key never sits in the YAML. Only digests are kept in memory;
a presented key is hashed and looked up in a dict, so no comparison of secrets happens at all
(the lookup compares digests, whose timing tells nothing about any key). The consumer name is
set on the request and sent upstream in ``X-Consumer-ID``; a client's own ``X-Consumer-ID`` is
always removed, and the credential itself is stripped from the upstream request by default.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msa_gateway.errors import Unauthorized
from msa_gateway.policies.base import PolicyError
from msa_gateway.policies.credentials import (
    DEFAULT_REALM,
    add_upstream_headers,
    challenge,
    policy_header,
    realm,
    take_header,
    take_query,
)
from msa_gateway.policies.parsing import block

if TYPE_CHECKING:
    from msa_gateway.model import ServiceSpec
    from msa_gateway.policies.base import Reply
    from msa_gateway.proxy.request import ProxyRequest

CONSUMER = re.compile(r"^[A-Za-z0-9._@-]{1,128}$")
HASHED = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
MIN_KEY_LENGTH = 16
KEYS = {"keys_env", "keys_file", "keys", "header", "query", "consumer_header", "strip_credential", "realm"}


@dataclass(frozen=True, slots=True)
class ApiKeyConfig:
    """A parsed ``api_key`` block; ``keys`` holds (SHA-256 digest, consumer) pairs, sorted."""

    keys: tuple[tuple[bytes, str], ...] = field(repr=False)
    header: bytes = b"x-api-key"
    query: bytes | None = None
    consumer_header: bytes | None = b"x-consumer-id"
    strip_credential: bool = True
    realm: str = DEFAULT_REALM


def digest(key: str | bytes) -> bytes:
    """Return the SHA-256 digest a key is stored and looked up by."""
    return hashlib.sha256(key.encode("utf-8") if isinstance(key, str) else key).digest()


def _entry(text: str, where: str) -> tuple[bytes, str]:
    """Parse one ``consumer:key`` (or ``consumer:sha256:<hex>``) entry; never echo the key."""
    consumer, sep, secret = text.partition(":")
    consumer, secret = consumer.strip(), secret.strip()
    if not sep or not CONSUMER.match(consumer):
        raise PolicyError(where, "entries are consumer:key, the consumer made of letters, digits and ._@-")
    hashed = HASHED.match(secret)
    if hashed:
        return bytes.fromhex(hashed.group(1)), consumer
    if len(secret) < MIN_KEY_LENGTH:
        raise PolicyError(where, f"the key of {consumer!r} is shorter than {MIN_KEY_LENGTH} characters")
    return digest(secret), consumer


def _from_env(name: Any) -> list[tuple[bytes, str]]:
    if not isinstance(name, str) or not name:
        raise PolicyError("keys_env", "must name an environment variable")
    value = os.environ.get(name)
    if value is None:
        raise PolicyError("keys_env", f"the environment variable {name} is not set")
    return [
        _entry(item, f"keys_env ({name}), entry {i}")
        for i, item in enumerate(value.replace(",", " ").split())
    ]


def _from_file(path: Any) -> list[tuple[bytes, str]]:
    if not isinstance(path, str) or not path:
        raise PolicyError("keys_file", "must be a file path")
    try:
        lines = Path(path).read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError("keys_file", f"cannot read {path}: {exc.__class__.__name__}") from None
    return [
        _entry(line, f"keys_file ({path}), line {n}")
        for n, line in enumerate(lines, 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _inline(raw: Any) -> list[tuple[bytes, str]]:
    if not isinstance(raw, list):
        raise PolicyError("keys", "must be a list of {consumer, sha256}")
    out = []
    for i, item in enumerate(raw):
        entry = block(item, {"consumer", "sha256"}, f"keys.{i}")
        consumer, hexdigest = entry.get("consumer"), entry.get("sha256")
        if not isinstance(consumer, str) or not CONSUMER.match(consumer):
            raise PolicyError(f"keys.{i}.consumer", "required: letters, digits and ._@-")
        if not isinstance(hexdigest, str) or not HASHED.match(f"sha256:{hexdigest}"):
            raise PolicyError(
                f"keys.{i}.sha256", "required: the key's SHA-256 as 64 hex digits (no plaintext)"
            )
        out.append((bytes.fromhex(hexdigest), consumer))
    return out


def parse(raw: Any) -> ApiKeyConfig:
    """Parse an ``api_key`` block; raise ``PolicyError`` naming the key that is wrong."""
    raw = block(raw, KEYS)
    pairs: list[tuple[bytes, str]] = []
    if "keys_env" in raw:
        pairs += _from_env(raw["keys_env"])
    if "keys_file" in raw:
        pairs += _from_file(raw["keys_file"])
    if "keys" in raw:
        pairs += _inline(raw["keys"])
    if not pairs:
        raise PolicyError("keys", "no key configured: set keys_env, keys_file or keys (hashed)")
    owners: dict[bytes, str] = {}
    for key, consumer in pairs:
        if owners.setdefault(key, consumer) != consumer:
            raise PolicyError("keys", f"one key is given to both {owners[key]!r} and {consumer!r}")
    strip = raw.get("strip_credential", True)
    if not isinstance(strip, bool):
        raise PolicyError("strip_credential", "must be true or false")
    query = raw.get("query")
    consumer_header = raw.get("consumer_header", "X-Consumer-ID")
    return ApiKeyConfig(
        keys=tuple(sorted(owners.items())),
        header=policy_header(raw.get("header", "X-API-Key"), "header"),
        query=None if query is None else _query_name(query),
        consumer_header=None
        if consumer_header is None
        else policy_header(consumer_header, "consumer_header"),
        strip_credential=strip,
        realm=realm(raw.get("realm", DEFAULT_REALM)),
    )


def _query_name(raw: Any) -> bytes:
    if not isinstance(raw, str) or not re.match(r"^[A-Za-z0-9._~-]{1,64}$", raw):
        raise PolicyError("query", "must be a query parameter name (letters, digits and ._~-)")
    return raw.encode("ascii")


class ApiKeyAuth:
    """401 unless the request carries a known key; then the consumer is known and forwarded."""

    name = "api_key"
    __slots__ = ("config", "drop", "invalid", "keys", "missing")

    def __init__(self, config: ApiKeyConfig) -> None:
        self.config = config
        ch = config.consumer_header
        self.keys: dict[bytes, tuple[str, tuple[tuple[bytes, bytes], ...]]] = {
            key: (consumer, ((ch, consumer.encode("ascii")),) if ch else ()) for key, consumer in config.keys
        }
        self.drop = frozenset({ch} if ch else ())
        self.missing = challenge("ApiKey", config.realm)
        self.invalid = challenge("ApiKey", config.realm, "invalid_key")

    @classmethod
    def build(cls, config: ApiKeyConfig, spec: ServiceSpec) -> ApiKeyAuth:
        """Return the stage for one route (nothing is shared: the key table is the config)."""
        return cls(config)

    async def __call__(self, request: ProxyRequest) -> Reply | None:
        """Find the key, look its digest up, set the consumer; raise ``Unauthorized`` otherwise."""
        config = self.config
        presented, kept = take_header(request.headers, config.header, config.strip_credential, self.drop)
        if presented is None and config.query is not None:
            scope = request.scope
            presented, rest = take_query(scope["query_string"], config.query)
            if presented is not None and config.strip_credential:
                scope["query_string"] = rest
        if presented is None:
            raise Unauthorized("an API key is required", self.missing)
        found = self.keys.get(hashlib.sha256(presented).digest())
        if found is None:
            raise Unauthorized("the API key is not valid", self.invalid, "invalid_api_key")
        request.headers = kept
        request.consumer, extra = found
        if extra:
            add_upstream_headers(request, extra)
        return None
