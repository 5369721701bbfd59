"""The stage tables, in the order stages run, and their compilation per route.

Order of request stages (fixed, documented in the README): IP rules -> authentication -> rate
limit -> CORS -> transforms -> body size. Policies that are not built yet slot in at their
place; response stages run in table order on the instance's response head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from msa_gateway.policies.body_size import BodySizeLimit

if TYPE_CHECKING:
    from msa_gateway.model import ServiceSpec
    from msa_gateway.policies.base import (
        RequestStage,
        RequestStageFactory,
        ResponseStage,
        ResponseStageFactory,
    )

REQUEST_STAGES: tuple[RequestStageFactory, ...] = (BodySizeLimit.build,)
RESPONSE_STAGES: tuple[ResponseStageFactory, ...] = ()


def compile_request_stages(spec: ServiceSpec) -> tuple[RequestStage, ...]:
    """Return the request stages ``spec`` configures, in table order (empty when none)."""
    return tuple(s for s in (build(spec) for build in REQUEST_STAGES) if s is not None)


def compile_response_stages(spec: ServiceSpec) -> tuple[ResponseStage, ...]:
    """Return the response stages ``spec`` configures, in table order (empty when none)."""
    return tuple(s for s in (build(spec) for build in RESPONSE_STAGES) if s is not None)
