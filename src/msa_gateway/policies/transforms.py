"""``headers``: add, set, remove and rename headers on the request and on the response.

Per side, the operations run in the order remove -> rename -> set -> add. A value may hold
``${request_id}``, ``${client_ip}``, ``${consumer}`` and ``${service}``; templates are split into
parts when the config is parsed, so a request only joins strings. A header whose value names a
variable without a value (``${consumer}`` before anyone authenticated) is left out rather than
sent empty. Headers the gateway sets itself (``Host``, ``X-Forwarded-*``, ``X-Request-ID``, the
framing headers) cannot be touched: that is a config error, not a silent no-op.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self

from msa_gateway.policies.base import ConfigStage, PolicyError
from msa_gateway.policies.parsing import block, header_name, header_value, strings

if TYPE_CHECKING:
    from msa_gateway.model import ServiceSpec
    from msa_gateway.policies.base import Reply
    from msa_gateway.proxy.request import Headers, ProxyRequest

VARIABLES = ("request_id", "client_ip", "consumer", "service")
_VAR = re.compile(r"\$\{([^}]*)\}")
_GATEWAY_OWNED = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"connection", b"x-request-id", b"forwarded"}
)
_OPS = {"add", "set", "remove", "rename"}

# A template: literal strings and variable names, alternating as (is_variable, text).
Template = tuple[tuple[bool, str], ...]


def template(raw: Any, key: str) -> Template:
    """Split a header value into literal parts and known variables."""
    value = header_value(raw, key)
    parts: list[tuple[bool, str]] = []
    pos = 0
    for m in _VAR.finditer(value):
        if m.group(1) not in VARIABLES:
            raise PolicyError(key, f"unknown variable ${{{m.group(1)}}}; known: {', '.join(VARIABLES)}")
        if m.start() > pos:
            parts.append((False, value[pos : m.start()]))
        parts.append((True, m.group(1)))
        pos = m.end()
    if pos < len(value) or not parts:
        parts.append((False, value[pos:]))
    return tuple(parts)


@dataclass(frozen=True, slots=True)
class SideConfig:
    """The operations on one side (request or response)."""

    remove: frozenset[bytes] = frozenset()
    rename: tuple[tuple[bytes, bytes], ...] = ()
    set: tuple[tuple[bytes, Template], ...] = ()
    add: tuple[tuple[bytes, Template], ...] = ()


@dataclass(frozen=True, slots=True)
class TransformsConfig:
    """The parsed ``headers`` block."""

    request: SideConfig | None = None
    response: SideConfig | None = None


def _name(raw: Any, key: str) -> bytes:
    name = header_name(raw, key)
    if name in _GATEWAY_OWNED or name.startswith(b"x-forwarded-"):
        raise PolicyError(key, f"{raw} is set by the gateway and cannot be changed here")
    return name


def _side(raw: Any, where: str) -> SideConfig:
    data = block(raw, _OPS, where)

    def pairs(op: str) -> dict[Any, Any]:
        value = data.get(op, {})
        if not isinstance(value, dict):
            raise PolicyError(f"{where}.{op}", "must be a mapping of header names to values")
        return value

    return SideConfig(
        remove=frozenset(
            _name(n, f"{where}.remove") for n in strings(data.get("remove", []), f"{where}.remove")
        ),
        rename=tuple(
            (_name(old, f"{where}.rename.{old}"), _name(new, f"{where}.rename.{old}"))
            for old, new in pairs("rename").items()
        ),
        set=tuple(
            (_name(n, f"{where}.set.{n}"), template(v, f"{where}.set.{n}")) for n, v in pairs("set").items()
        ),
        add=tuple(
            (_name(n, f"{where}.add.{n}"), template(v, f"{where}.add.{n}")) for n, v in pairs("add").items()
        ),
    )


def parse(raw: Any) -> TransformsConfig:
    """Parse ``{request: {...}, response: {...}}``."""
    data = block(raw, {"request", "response"})
    config = TransformsConfig(
        request=_side(data["request"], "request") if data.get("request") is not None else None,
        response=_side(data["response"], "response") if data.get("response") is not None else None,
    )
    if config.request is None and config.response is None:
        raise PolicyError("request", "give request and/or response operations")
    return config


def _render(parts: Template, request: ProxyRequest | None) -> bytes | None:
    out = []
    for is_var, text in parts:
        if not is_var:
            out.append(text)
            continue
        value = None if request is None else _variable(text, request)
        if value is None:
            return None
        out.append(value)
    return "".join(out).encode("latin-1", "replace")


def _variable(name: str, request: ProxyRequest) -> str | None:
    if name == "request_id":
        return request.request_id
    if name == "client_ip":
        return request.client_ip or None
    if name == "consumer":
        return request.consumer
    route = request.route
    return route.name if route is not None else None


class SideOps:
    """One side's operations prepared for the request path: what to drop, rename and append."""

    __slots__ = ("append", "drop", "fixed", "renames", "replaced", "side")

    def __init__(self, side: SideConfig) -> None:
        self.side = side
        self.renames = dict(side.rename)
        self.replaced = frozenset(n for n, _ in side.set)
        self.drop = side.remove | self.replaced  # one pass when nothing is renamed
        self.append = (*side.set, *side.add)
        # No variable anywhere: the appended headers are the same for every request, rendered once.
        literal = all(not is_var for _, parts in self.append for is_var, _ in parts)
        self.fixed: list[tuple[bytes, bytes]] | None = (
            [(n, "".join(t for _, t in parts).encode("latin-1", "replace")) for n, parts in self.append]
            if literal
            else None
        )

    def apply(self, request: ProxyRequest | None, headers: Headers) -> Headers:
        """Return ``headers`` with the operations applied in order: remove, rename, set, add (a new list)."""
        renames = self.renames
        if renames:
            out = [(renames.get(n, n), v) for n, v in headers if n not in self.side.remove]
            if self.replaced:
                out = [(n, v) for n, v in out if n not in self.replaced]
        else:
            drop = self.drop
            out = [(n, v) for n, v in headers if n not in drop]
        if self.fixed is not None:
            out.extend(self.fixed)
            return out
        for name, parts in self.append:
            value = _render(parts, request)
            if value is not None:
                out.append((name, value))
        return out


class _SideStage(ConfigStage):
    """A stage for one side's operations; none is built when the config leaves that side empty."""

    name = "headers"
    side: ClassVar[str]
    __slots__ = ("ops",)
    config: SideConfig

    def __init__(self, config: SideConfig) -> None:
        super().__init__(config)
        self.ops = SideOps(config)

    @classmethod
    def build(cls, config: TransformsConfig, spec: ServiceSpec) -> Self | None:
        """Return the stage when ``config`` has operations for this side."""
        del spec
        side: SideConfig | None = getattr(config, cls.side)
        return None if side is None else cls(side)


class RequestTransforms(_SideStage):
    """The request stage: change the headers that go upstream."""

    side = "request"
    __slots__ = ()

    async def __call__(self, request: ProxyRequest) -> Reply | None:
        """Replace the request's header list (the scope's own list is left alone)."""
        request.headers = self.ops.apply(request, request.headers)
        return None


class ResponseTransforms(_SideStage):
    """The response stage: change the headers that go to the client."""

    side = "response"
    __slots__ = ()

    def __call__(self, request: ProxyRequest, status: int, headers: Headers) -> Headers:
        """Return the changed headers."""
        del status
        return self.ops.apply(request, headers)
