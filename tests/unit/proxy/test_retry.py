"""Retry decision table: method x failure kind x bytes sent x opt-in x body x count x deadline x budget."""

from __future__ import annotations

import itertools

import pytest

from msa_gateway.model import MIB, RetryPolicy
from msa_gateway.proxy.retry import (
    IDEMPOTENT_METHODS,
    NO_RETRY_REASONS,
    RETRY_REASONS,
    Decision,
    FailureKind,
    RetryBudget,
    failure_from_kind,
    should_retry,
)

K = FailureKind
IDEMPOTENT = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]
UNSAFE = ["POST", "PATCH", "CONNECT", "PROPFIND"]
ALL_METHODS = IDEMPOTENT + UNSAFE
OPT_IN = RetryPolicy(retry_on_status=frozenset({502, 503, 504}), retry_on_timeout=True, retry_on_reset=True)
DEFAULT = RetryPolicy()
NO_RESET = RetryPolicy(retry_on_reset=False)

# (kind, status, request bytes sent) -> expected reason for (non-idempotent, idempotent) methods
# under OPT_IN, written out by hand from the rules in the issue.
TABLE: list[tuple[FailureKind, int | None, int, str, str]] = [
    (K.CONNECT_REFUSED, None, 0, "connect_refused", "connect_refused"),
    (K.CONNECT_TIMEOUT, None, 0, "connect_timeout", "connect_timeout"),
    (K.CONNECT_ERROR, None, 0, "connect_error", "connect_error"),
    (K.POOL_OVERFLOW, None, 0, "overflow", "overflow"),
    (K.RESET_BEFORE_SEND, None, 0, "reset_before_send", "reset_before_send"),
    # Inconsistent input (bytes were written): treated as a reset after sending.
    (K.RESET_BEFORE_SEND, None, 10, "not_idempotent", "reset"),
    (K.RESET_AFTER_SEND, None, 1, "not_idempotent", "reset"),
    (K.RESET_AFTER_SEND, None, 5000, "not_idempotent", "reset"),
    # A reset reported with nothing written is still "may have been delivered" by its kind.
    (K.RESET_AFTER_SEND, None, 0, "not_idempotent", "reset"),
    (K.PROTOCOL_ERROR, None, 200, "not_idempotent", "protocol_error"),
    (K.READ_TIMEOUT, None, 200, "not_idempotent", "read_timeout"),
    (K.STATUS, 502, 200, "not_idempotent", "status_502"),
    (K.STATUS, 503, 200, "not_idempotent", "status_503"),
    (K.STATUS, 504, 200, "not_idempotent", "status_504"),
    (K.STATUS, 500, 200, "not_idempotent", "status_not_retriable"),
    (K.STATUS, 429, 200, "not_idempotent", "status_not_retriable"),
    (K.STATUS, None, 200, "not_idempotent", "status_not_retriable"),
]
TABLE_IDS = [f"{k.name}-{s}-{b}" for k, s, b, _, _ in TABLE]


def decide(
    method: str,
    kind: FailureKind,
    *,
    status: int | None = None,
    sent: int = 0,
    to_client: int = 0,
    replayable: bool = True,
    attempt: int = 1,
    deadline_left: float | None = 10.0,
    policy: RetryPolicy = OPT_IN,
    budget: RetryBudget | None = None,
) -> Decision:
    return should_retry(
        method,
        kind,
        status=status,
        request_bytes_sent=sent,
        response_bytes_sent_to_client=to_client,
        body_replayable=replayable,
        attempt=attempt,
        deadline_left=deadline_left,
        policy=policy,
        budget=budget,
    )


def test_idempotent_methods_are_the_rfc_ones() -> None:
    assert frozenset(IDEMPOTENT) == IDEMPOTENT_METHODS


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize(("kind", "status", "sent", "unsafe_reason", "safe_reason"), TABLE, ids=TABLE_IDS)
def test_decision_table_with_everything_opted_in(
    method: str, kind: FailureKind, status: int | None, sent: int, unsafe_reason: str, safe_reason: str
) -> None:
    expected = safe_reason if method in IDEMPOTENT else unsafe_reason
    decision = decide(method, kind, status=status, sent=sent)
    assert decision.reason == expected
    assert decision.retry is (expected not in NO_RETRY_REASONS)


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize(
    ("kind", "status", "sent", "reason_idempotent"),
    [
        (K.CONNECT_REFUSED, None, 0, "connect_refused"),
        (K.RESET_BEFORE_SEND, None, 0, "reset_before_send"),
        (K.RESET_AFTER_SEND, None, 100, "reset"),  # like NGINX's default proxy_next_upstream error
        (K.PROTOCOL_ERROR, None, 100, "protocol_error"),
        (K.READ_TIMEOUT, None, 100, "timeout_not_retriable"),  # opt-in only
        (K.STATUS, 503, 100, "status_not_retriable"),  # opt-in only
    ],
)
def test_default_policy_retries_only_the_undelivered_and_idempotent_resets(
    method: str, kind: FailureKind, status: int | None, sent: int, reason_idempotent: str
) -> None:
    decision = decide(method, kind, status=status, sent=sent, policy=DEFAULT)
    if method in IDEMPOTENT or sent == 0:
        assert decision.reason == reason_idempotent
    else:
        assert decision == Decision(False, "not_idempotent")


@pytest.mark.parametrize(
    ("kind", "sent", "reason"),
    [
        (K.CONNECT_REFUSED, 0, "connect_refused"),
        (K.RESET_BEFORE_SEND, 0, "reset_before_send"),
        (K.RESET_AFTER_SEND, 10, "reset_not_retriable"),
        (K.PROTOCOL_ERROR, 10, "reset_not_retriable"),
    ],
)
def test_retry_on_reset_off_keeps_only_undelivered_retries(kind: FailureKind, sent: int, reason: str) -> None:
    assert decide("GET", kind, sent=sent, policy=NO_RESET).reason == reason


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize(("kind", "status", "sent", "_u", "_s"), TABLE, ids=TABLE_IDS)
@pytest.mark.parametrize("to_client", [1, 65536])
def test_never_once_a_response_byte_reached_the_client(
    method: str, kind: FailureKind, status: int | None, sent: int, _u: str, _s: str, to_client: int
) -> None:
    budget = RetryBudget()
    assert decide(method, kind, status=status, sent=sent, to_client=to_client, budget=budget) == Decision(
        False, "response_started"
    )
    assert budget.retries_active == 0


@pytest.mark.parametrize("method", ["PUT", "GET", "DELETE"])
@pytest.mark.parametrize(
    ("kind", "status"), [(K.RESET_AFTER_SEND, None), (K.READ_TIMEOUT, None), (K.STATUS, 503)]
)
def test_unbuffered_body_is_not_replayed_once_sending_started(
    method: str, kind: FailureKind, status: int | None
) -> None:
    assert decide(method, kind, status=status, sent=100, replayable=False).reason == "body_not_buffered"
    assert decide(method, kind, status=status, sent=100, replayable=True).retry


@pytest.mark.parametrize("method", ["POST", "PUT"])
@pytest.mark.parametrize("kind", [K.CONNECT_REFUSED, K.CONNECT_TIMEOUT, K.RESET_BEFORE_SEND])
def test_unbuffered_body_does_not_matter_when_nothing_was_sent(method: str, kind: FailureKind) -> None:
    assert decide(method, kind, sent=0, replayable=False).retry


RETRIABLE = [
    ("POST", K.CONNECT_REFUSED, None, 0),
    ("PATCH", K.RESET_BEFORE_SEND, None, 0),
    ("GET", K.RESET_AFTER_SEND, None, 100),
    ("PUT", K.READ_TIMEOUT, None, 100),
    ("GET", K.STATUS, 503, 100),
]


@pytest.mark.parametrize(("method", "kind", "status", "sent"), RETRIABLE)
@pytest.mark.parametrize(
    ("attempt", "max_retries", "retry"),
    [(1, 2, True), (2, 2, True), (3, 2, False), (9, 2, False), (1, 0, False), (1, 1, True), (2, 1, False)],
)
def test_bounded_by_count(
    method: str, kind: FailureKind, status: int | None, sent: int, attempt: int, max_retries: int, retry: bool
) -> None:
    policy = RetryPolicy(max_retries=max_retries, retry_on_status=frozenset({503}), retry_on_timeout=True)
    decision = decide(method, kind, status=status, sent=sent, attempt=attempt, policy=policy)
    assert decision.retry is retry
    if not retry:
        assert decision.reason == "max_retries"


@pytest.mark.parametrize(("method", "kind", "status", "sent"), RETRIABLE)
@pytest.mark.parametrize(
    ("deadline_left", "retry"), [(None, True), (5.0, True), (0.001, True), (0.0, False), (-1.0, False)]
)
def test_bounded_by_the_overall_deadline(
    method: str, kind: FailureKind, status: int | None, sent: int, deadline_left: float | None, retry: bool
) -> None:
    budget = RetryBudget()
    decision = decide(method, kind, status=status, sent=sent, deadline_left=deadline_left, budget=budget)
    assert decision.retry is retry
    if not retry:
        assert decision.reason == "deadline_exceeded"
        assert budget.retries_active == 0


@pytest.mark.parametrize(("method", "kind", "status", "sent"), RETRIABLE)
@pytest.mark.parametrize(
    ("in_flight", "running_retries", "retry"),
    [(0, 2, True), (0, 3, False), (20, 3, True), (20, 4, False), (100, 19, True), (100, 20, False)],
)
def test_bounded_by_the_budget(
    method: str,
    kind: FailureKind,
    status: int | None,
    sent: int,
    in_flight: int,
    running_retries: int,
    retry: bool,
) -> None:
    budget = RetryBudget(budget_percent=20.0, min_retry_concurrency=3)
    budget.requests_active = in_flight
    budget.retries_active = running_retries
    decision = decide(method, kind, status=status, sent=sent, budget=budget)
    assert decision.retry is retry
    if retry:
        assert budget.retries_active == running_retries + 1
    else:
        assert decision.reason == "budget_exhausted"
        assert budget.retries_active == running_retries


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize(("kind", "status", "sent", "_u", "_s"), TABLE, ids=TABLE_IDS)
def test_refusals_never_take_a_budget_slot(
    method: str, kind: FailureKind, status: int | None, sent: int, _u: str, _s: str
) -> None:
    budget = RetryBudget()
    decision = decide(method, kind, status=status, sent=sent, budget=budget)
    assert budget.retries_active == (1 if decision.retry else 0)


def test_eligibility_reason_wins_over_limits() -> None:
    # Several rules say no: the label names the first one in the documented order.
    args = {"sent": 10, "attempt": 99, "deadline_left": -1.0}
    assert decide("POST", K.RESET_AFTER_SEND, **args).reason == "not_idempotent"  # type: ignore[arg-type]
    assert decide("GET", K.RESET_AFTER_SEND, replayable=False, **args).reason == "body_not_buffered"  # type: ignore[arg-type]
    assert decide("GET", K.RESET_AFTER_SEND, **args).reason == "max_retries"  # type: ignore[arg-type]
    assert decide("GET", K.RESET_AFTER_SEND, sent=10, deadline_left=-1.0).reason == "deadline_exceeded"


def test_every_label_is_bounded() -> None:
    seen: set[str] = set()
    statuses = [None, *range(100, 600)]
    for method, kind, status, sent, replayable, to_client in itertools.product(
        ["GET", "POST"], FailureKind, statuses, [0, 1], [True, False], [0, 1]
    ):
        if kind is not K.STATUS and status is not None:
            continue
        seen.add(
            decide(method, kind, status=status, sent=sent, replayable=replayable, to_client=to_client).reason
        )
    retried_statuses = {r for r in seen if r.startswith("status_") and r != "status_not_retriable"}
    assert retried_statuses == {"status_502", "status_503", "status_504"}  # only the opted-in ones
    assert seen - retried_statuses <= RETRY_REASONS | NO_RETRY_REASONS
    assert len(seen) <= 25


def test_budget_limit_is_a_share_of_requests_in_flight_with_a_floor() -> None:
    budget = RetryBudget(20.0, 3)
    assert budget.limit == 3
    for _ in range(50):
        budget.start_request()
    assert budget.limit == 10
    taken = sum(budget.try_acquire_retry() for _ in range(15))
    assert taken == 10 and budget.retries_active == 10
    budget.release_retry()
    assert budget.try_acquire_retry()
    for _ in range(60):
        budget.end_request()
    assert budget.requests_active == 0
    assert budget.limit == 3
    for _ in range(20):
        budget.release_retry()
    assert budget.retries_active == 0


def test_budget_for_policy_and_validation() -> None:
    budget = RetryBudget.for_policy(RetryPolicy(budget_percent=50.0, min_retry_concurrency=1))
    assert budget.budget_percent == 50.0 and budget.min_retry_concurrency == 1
    with pytest.raises(ValueError):
        RetryBudget(150.0, 3)
    with pytest.raises(ValueError):
        RetryBudget(20.0, -1)


def test_zero_budget_with_zero_floor_never_retries() -> None:
    budget = RetryBudget(0.0, 0)
    budget.requests_active = 1000
    assert decide("POST", K.CONNECT_REFUSED, budget=budget) == Decision(False, "budget_exhausted")


def test_policy_defaults() -> None:
    policy = RetryPolicy()
    assert policy.max_retries == 2
    assert policy.retry_on_status == frozenset()
    assert policy.retry_on_timeout is False
    assert policy.retry_on_reset is True
    assert policy.per_try_timeout is None
    assert policy.buffer_limit == MIB == 1_048_576
    assert (policy.budget_percent, policy.min_retry_concurrency) == (20.0, 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_retries": -1},
        {"retry_on_status": frozenset({99})},
        {"retry_on_status": frozenset({600})},
        {"per_try_timeout": 0.0},
        {"buffer_limit": -1},
        {"budget_percent": 100.5},
        {"min_retry_concurrency": -1},
    ],
)
def test_policy_rejects_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("length", "ok"), [(None, False), (0, True), (MIB, True), (MIB + 1, False), (-1, False)]
)
def test_can_buffer_up_to_the_limit(length: int | None, ok: bool) -> None:
    assert RetryPolicy().can_buffer(length) is ok


@pytest.mark.parametrize(
    ("per_try", "deadline_left", "expected"),
    [
        (None, None, None),
        (None, 3.0, 3.0),
        (2.0, None, 2.0),
        (2.0, 3.0, 2.0),
        (2.0, 1.5, 1.5),
        (2.0, -1.0, 0.0),
    ],
)
def test_attempt_timeout_is_bounded_by_the_deadline(
    per_try: float | None, deadline_left: float | None, expected: float | None
) -> None:
    assert RetryPolicy(per_try_timeout=per_try).attempt_timeout(deadline_left) == expected


@pytest.mark.parametrize(
    ("kind", "sent", "expected"),
    [
        ("connect_refused", 0, K.CONNECT_REFUSED),
        ("connect_timeout", 0, K.CONNECT_TIMEOUT),
        ("read_timeout", 100, K.READ_TIMEOUT),
        ("invalid_response", 100, K.PROTOCOL_ERROR),
        ("reset", 0, K.RESET_BEFORE_SEND),
        ("reset", 1, K.RESET_AFTER_SEND),
        ("disconnected", 0, K.RESET_BEFORE_SEND),
        ("disconnected", 300, K.RESET_AFTER_SEND),
        ("overflow", 0, K.POOL_OVERFLOW),
        ("other", 0, K.PROTOCOL_ERROR),
        ("protocol_error", 100, K.PROTOCOL_ERROR),
        ("connect_error", 0, K.CONNECT_ERROR),
        ("reset_before_send", 0, K.RESET_BEFORE_SEND),
        ("reset_before_send", 5, K.RESET_AFTER_SEND),
        ("reset", False, K.RESET_BEFORE_SEND),  # UpstreamError.request_sent is a bool
        ("reset", True, K.RESET_AFTER_SEND),
        ("status", 100, K.STATUS),
    ],
)
def test_failure_from_upstream_kind(kind: str, sent: int, expected: FailureKind) -> None:
    assert failure_from_kind(kind, sent) is expected
