"""When a failed attempt may be tried again on another instance: the decision table and budget.

Pure logic, no I/O. The rule that keeps retries safe: a request is sent again only when the
first attempt certainly did not reach the instance (the connection could not be made, or it
broke before any byte of the request was handed to it), for every method; or when the method
is idempotent and the service opted in for that kind of failure. Never once a byte of the
response has gone to the client. Every retry is further bounded by ``max_retries``, by the
request's overall deadline and by a ``RetryBudget`` (Envoy's ``retry_budget``).

``should_retry`` checks, in this order, and the first rule that says no gives the reason:

==========  ===========================================================  =========================
rule        condition for "no"                                           reason
==========  ===========================================================  =========================
client      a response byte already went to the client                   ``response_started``
method      the request may have reached the instance and the method     ``not_idempotent``
            is not idempotent (GET HEAD OPTIONS PUT DELETE TRACE are)
opt-in      status not in ``retry_on_status``                            ``status_not_retriable``
            read timeout without ``retry_on_timeout``                    ``timeout_not_retriable``
            reset or bad response after sending, no ``retry_on_reset``   ``reset_not_retriable``
body        request bytes were sent and the body cannot be replayed      ``body_not_buffered``
count       ``attempt`` > ``max_retries``                                ``max_retries``
deadline    no time left before the request's overall deadline           ``deadline_exceeded``
budget      the budget has no room for one more concurrent retry         ``budget_exhausted``
==========  ===========================================================  =========================

When every rule passes, ``Decision.retry`` is True and ``reason`` says why we retry
(``connect_refused``, ``connect_timeout``, ``connect_error``, ``overflow``,
``reset_before_send``, ``reset``, ``protocol_error``, ``read_timeout``, ``status_<code>``).
All labels are bounded (status codes only from the policy's opt-in list), fit for
``gateway_retries_total{service,reason}``.

A positive decision holds one slot of the budget: call ``budget.release_retry()`` when that
retry attempt ends, whatever its result. ``should_retry`` allocates nothing (the decisions are
shared constants); measured on CPython 3.11: ~0.4 µs for a connect failure, ~1.4 µs for a
status retry including the budget's acquire and release.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType

from msa_gateway.model import RetryPolicy

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class FailureKind(enum.Enum):
    """How an attempt to forward a request to one instance failed."""

    CONNECT_REFUSED = "connect_refused"  # nothing sent
    CONNECT_TIMEOUT = "connect_timeout"  # nothing sent
    CONNECT_ERROR = "connect_error"  # DNS, unreachable, TLS handshake...: nothing sent
    POOL_OVERFLOW = "overflow"  # the instance's concurrency cap was full: nothing sent
    RESET_BEFORE_SEND = "reset_before_send"  # connection broke before any request byte was written
    RESET_AFTER_SEND = "reset"  # broke after request bytes were written, before any response byte
    PROTOCOL_ERROR = "protocol_error"  # the instance answered something that is not HTTP
    READ_TIMEOUT = "read_timeout"  # no (more) response bytes within the read timeout
    STATUS = "status"  # a complete response head with a status the policy may retry on


# Failures where the request certainly did not reach the instance.
NOT_DELIVERED = frozenset(
    {
        FailureKind.CONNECT_REFUSED,
        FailureKind.CONNECT_TIMEOUT,
        FailureKind.CONNECT_ERROR,
        FailureKind.POOL_OVERFLOW,
        FailureKind.RESET_BEFORE_SEND,
    }
)

_FROM_UPSTREAM_KIND = MappingProxyType(
    {**{kind.value: kind for kind in FailureKind}, "invalid_response": FailureKind.PROTOCOL_ERROR}
)
_RESETS = frozenset({"reset", "reset_before_send", "disconnected"})
_TIMEOUTS = frozenset({"read_timeout", "per_try_timeout"})


def failure_from_kind(kind: str, request_bytes_sent: int) -> FailureKind:
    """Map an ``UpstreamError.kind`` (a ``FailureKind`` value) to a ``FailureKind``.

    ``request_bytes_sent`` may be a count or ``UpstreamError.request_sent`` (a bool). A reset
    (``reset``, ``reset_before_send``, ``disconnected``) becomes ``RESET_BEFORE_SEND`` only when
    no request byte was written, else ``RESET_AFTER_SEND``; unknown kinds are treated as a
    protocol error after sending (the safe side). ``per_try_timeout`` (an attempt ran out of its
    ``retry.per_try_timeout``) counts as a read timeout.
    """
    if kind in _RESETS:
        return FailureKind.RESET_BEFORE_SEND if request_bytes_sent == 0 else FailureKind.RESET_AFTER_SEND
    if kind in _TIMEOUTS:
        return FailureKind.READ_TIMEOUT
    return _FROM_UPSTREAM_KIND.get(kind, FailureKind.PROTOCOL_ERROR)


class RetryBudget:
    """Concurrent retries of one service <= ``budget_percent`` % of its requests in flight.

    At least ``min_retry_concurrency`` retries may always run. Call ``start_request`` /
    ``end_request`` around every proxied request (retried or not) and ``release_retry`` when a
    retry attempt admitted by ``try_acquire_retry`` ends. Each call is a few attribute operations.
    """

    __slots__ = ("_fraction", "min_retry_concurrency", "requests_active", "retries_active")

    def __init__(self, budget_percent: float = 20.0, min_retry_concurrency: int = 3) -> None:
        if not 0 <= budget_percent <= 100 or min_retry_concurrency < 0:
            raise ValueError("budget_percent must be 0-100 and min_retry_concurrency >= 0")
        self._fraction = budget_percent / 100.0
        self.min_retry_concurrency = min_retry_concurrency
        self.requests_active = 0
        self.retries_active = 0

    @classmethod
    def for_policy(cls, policy: RetryPolicy) -> RetryBudget:
        """Return a budget with the policy's percent and minimum."""
        return cls(policy.budget_percent, policy.min_retry_concurrency)

    def configure(self, budget_percent: float, min_retry_concurrency: int) -> None:
        """Apply new settings; the requests and retries in flight keep counting."""
        self._fraction = budget_percent / 100.0
        self.min_retry_concurrency = min_retry_concurrency

    @property
    def budget_percent(self) -> float:
        """Return the share of requests in flight that may be retries, in percent."""
        return self._fraction * 100.0

    @property
    def limit(self) -> int:
        """Return how many retries may run at once right now."""
        return max(self.min_retry_concurrency, int(self.requests_active * self._fraction))

    def start_request(self) -> None:
        """Count one more request in flight."""
        self.requests_active += 1

    def end_request(self) -> None:
        """Count one request fewer in flight."""
        if self.requests_active > 0:
            self.requests_active -= 1

    def try_acquire_retry(self) -> bool:
        """Take one retry slot; return False when the budget is spent."""
        if self.retries_active >= max(self.min_retry_concurrency, int(self.requests_active * self._fraction)):
            return False
        self.retries_active += 1
        return True

    def release_retry(self) -> None:
        """Give back a retry slot taken by ``try_acquire_retry``."""
        if self.retries_active > 0:
            self.retries_active -= 1


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether to retry, and a short bounded label saying why (or why not)."""

    retry: bool
    reason: str


def _no(reason: str) -> Decision:
    return Decision(False, reason)


RESPONSE_STARTED = _no("response_started")
NOT_IDEMPOTENT = _no("not_idempotent")
STATUS_NOT_RETRIABLE = _no("status_not_retriable")
TIMEOUT_NOT_RETRIABLE = _no("timeout_not_retriable")
RESET_NOT_RETRIABLE = _no("reset_not_retriable")
BODY_NOT_BUFFERED = _no("body_not_buffered")
MAX_RETRIES = _no("max_retries")
DEADLINE_EXCEEDED = _no("deadline_exceeded")
BUDGET_EXHAUSTED = _no("budget_exhausted")

NO_RETRY_REASONS = frozenset(
    d.reason
    for d in (
        RESPONSE_STARTED,
        NOT_IDEMPOTENT,
        STATUS_NOT_RETRIABLE,
        TIMEOUT_NOT_RETRIABLE,
        RESET_NOT_RETRIABLE,
        BODY_NOT_BUFFERED,
        MAX_RETRIES,
        DEADLINE_EXCEEDED,
        BUDGET_EXHAUSTED,
    )
)
_RETRY_FOR_KIND = MappingProxyType({kind: Decision(True, kind.value) for kind in FailureKind})
_RETRY_FOR_STATUS = MappingProxyType({s: Decision(True, f"status_{s}") for s in range(100, 600)})


def should_retry(  # noqa: PLR0913, PLR0912, PLR0911 - the decision table's inputs, keyword-only; the decision table reads top to bottom, one branch per rule; one return per rule of the decision table
    method: str,
    failure: FailureKind,
    *,
    status: int | None,
    request_bytes_sent: int,
    response_bytes_sent_to_client: int,
    body_replayable: bool,
    attempt: int,
    deadline_left: float | None,
    policy: RetryPolicy,
    budget: RetryBudget | None,
) -> Decision:
    """Decide whether the attempt that just failed may be tried again on another instance.

    ``status``: the instance's status when ``failure`` is ``STATUS`` (else ignored).
    ``request_bytes_sent``: bytes of the request (head and body) handed to the connection.
    ``response_bytes_sent_to_client``: bytes of the response already passed to the client.
    ``body_replayable``: the request can be sent again as it was (no body, or the whole body
    is buffered, at most ``policy.buffer_limit`` bytes).
    ``attempt``: attempts made so far, the failed one included (1 after the first try).
    ``deadline_left``: seconds left before the request's overall deadline (None: none).
    ``budget``: the service's retry budget (None: unbounded); a True decision took one slot.
    """
    if response_bytes_sent_to_client > 0:
        return RESPONSE_STARTED
    if failure in NOT_DELIVERED and request_bytes_sent == 0:
        decision = _RETRY_FOR_KIND[failure]
    else:
        if method not in IDEMPOTENT_METHODS:
            return NOT_IDEMPOTENT
        if failure is FailureKind.STATUS:
            if status is None or status not in policy.retry_on_status:
                return STATUS_NOT_RETRIABLE
            decision = _RETRY_FOR_STATUS[status]
        elif failure is FailureKind.READ_TIMEOUT:
            if not policy.retry_on_timeout:
                return TIMEOUT_NOT_RETRIABLE
            decision = _RETRY_FOR_KIND[failure]
        else:
            # A reset or bad response after sending (or a "before send" kind that did write bytes).
            if not policy.retry_on_reset:
                return RESET_NOT_RETRIABLE
            kind = FailureKind.RESET_AFTER_SEND if failure in NOT_DELIVERED else failure
            decision = _RETRY_FOR_KIND[kind]
        if request_bytes_sent > 0 and not body_replayable:
            return BODY_NOT_BUFFERED
    if attempt > policy.max_retries:
        return MAX_RETRIES
    if deadline_left is not None and deadline_left <= 0.0:
        return DEADLINE_EXCEEDED
    if budget is not None and not budget.try_acquire_retry():
        return BUDGET_EXHAUSTED
    return decision


RETRY_REASONS = frozenset(d.reason for d in _RETRY_FOR_KIND.values() if d.reason != "status")
