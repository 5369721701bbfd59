"""The stage seam: one small object per policy, compiled per route when a snapshot is built.

A request passes through the route's request stages in a fixed order before anything is sent
upstream (IP rules -> CORS -> authentication -> rate limit -> transforms -> body size); a
stage either passes (returns None), answers itself with a ``Reply`` (a CORS preflight, say), or
raises an ``HTTPError`` (401, 403, 413, 429...), which ``errors.render`` turns into the one
JSON error shape. Response stages see the status and headers of the instance's answer before
they go to the client, and return the headers to send.

A stage is built by its factory from the service's spec; a factory returns None when the
service does not configure that policy, so a route with nothing configured has empty stage
tuples and pays nothing for the seam. Adding a policy is one module plus one entry in
``policies/chain.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Self

if TYPE_CHECKING:
    from msa_gateway.model import ServiceSpec
    from msa_gateway.proxy.request import Headers, ProxyRequest


class PolicyError(ValueError):
    """A ``policies:`` block is wrong; ``key`` is the dotted path inside ``policies``.

    Defined here (and re-exported by ``chain``) so that policy modules can raise it while
    ``chain`` imports them for its table.
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete answer a request stage gives instead of the instance."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""


class RequestStage(Protocol):
    """One policy applied before forwarding."""

    name: str

    async def __call__(self, request: ProxyRequest) -> Reply | None:
        """Pass (None), answer with a ``Reply``, or raise ``HTTPError``."""
        ...


class ResponseStage(Protocol):
    """One policy applied to the instance's response head."""

    name: str

    def __call__(self, request: ProxyRequest, status: int, headers: Headers) -> Headers:
        """Return the headers to send to the client (may be ``headers`` changed in place)."""
        ...


RequestStageFactory = Callable[["ServiceSpec"], RequestStage | None]
ResponseStageFactory = Callable[["ServiceSpec"], ResponseStage | None]


class ConfigStage:
    """A stage built from its policy's parsed config alone (most are): ``build`` is the table's factory."""

    __slots__ = ("config",)

    def __init__(self, config: Any) -> None:
        self.config = config

    @classmethod
    def build(cls, config: Any, spec: ServiceSpec) -> Self | None:
        """Return the stage for ``config`` (the service's spec is not needed)."""
        del spec
        return cls(config)
