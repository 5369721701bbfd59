"""``max_body_size``: refuse a request whose declared body is too large before reading any of it.

A body without a declared length (chunked) is counted while it streams (``proxy/exchange.py``
stops it at the same limit); this stage answers the common case at once with 413.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from msa_gateway.errors import PayloadTooLarge

if TYPE_CHECKING:
    from msa_gateway.model import ServiceSpec
    from msa_gateway.policies.base import Reply
    from msa_gateway.proxy.request import ProxyRequest


class BodySizeLimit:
    """413 for a Content-Length above the service's ``max_body_size``."""

    name = "max_body_size"
    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        self.limit = limit

    @classmethod
    def build(cls, spec: ServiceSpec) -> BodySizeLimit | None:
        """Return the stage when the service sets ``max_body_size``."""
        limit = spec.options.max_body_size
        return None if limit is None else cls(limit)

    async def __call__(self, request: ProxyRequest) -> Reply | None:
        """Raise ``PayloadTooLarge`` when the declared length is over the limit."""
        length = request.body_length
        if length is not None and length > self.limit:
            raise PayloadTooLarge(f"the request body is larger than {self.limit} bytes")
        return None
