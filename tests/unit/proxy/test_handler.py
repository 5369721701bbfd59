"""The whole request path driven through the ``UpstreamClient`` seam, without sockets.

Every routing, retry, ejection, panic, overflow and error-mapping decision of the handler and
the attempt loop is asserted here on a scripted fake upstream (tests/support/fake_upstream.py).
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from msa_gateway.errors import UpstreamError, UpstreamTimeout
from msa_gateway.proxy.handler import ProxyApp
from msa_gateway.runtime import Runtime
from tests.support.fake_upstream import FakeUpstream, Hang, Reply, access_lines, call, instances, make_runtime

A, B, C = "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"
REFUSED = UpstreamError("refused", "connect_refused", request_sent=False)
RESET = UpstreamError("reset", "reset", request_sent=True)


def metric(rt: object, name: str, **labels: str) -> float:
    value = rt.metrics.registry.get_sample_value(name, labels)  # type: ignore[attr-defined]
    return 0.0 if value is None else float(value)


async def test_get_is_forwarded_and_streamed_back_with_one_access_line() -> None:
    rt, up, log = make_runtime()
    rt.apply(instances(9001))
    up.script(A, Reply(200, chunks=[b"a", b"b", b"c"]))
    answer = await call(ProxyApp(rt), "GET", "/svc/items/1?x=%2F")
    assert (answer.status, answer.body) == (200, b"abc")
    assert up.calls[0].target == "/items/1?x=%2F"
    assert (b"x-forwarded-prefix", b"/svc") in up.calls[0].headers
    (line,) = access_lines(log)
    assert line["status"] == 200 and line["service"] == "svc" and line["instance"] == A and line["bytes"] == 3
    assert metric(rt, "gateway_requests_total", service="svc", method="GET", code="200") == 1


async def test_unknown_service_is_404_json_and_counted_as_unknown() -> None:
    rt, up, log = make_runtime()
    rt.apply(instances(9001))
    answer = await call(ProxyApp(rt), "GET", "/nope/x")
    assert answer.status == 404 and answer.json()["error"] == "service_not_found"
    assert answer.json()["request_id"] == answer.headers[b"x-request-id"].decode()
    assert not up.calls
    assert access_lines(log)[0]["service"] == "unknown"


@pytest.mark.parametrize("path", ["/svc/../admin", "/svc/%2e%2E/x", "/svc/a%2f..%2fb"])
async def test_dot_segments_are_refused_before_any_instance_is_reached(path: str) -> None:
    rt, up, _ = make_runtime()
    rt.apply(instances(9001))
    answer = await call(ProxyApp(rt), "GET", path)
    assert answer.status == 400 and not up.calls


async def test_connect_refused_is_retried_on_another_instance_even_for_post() -> None:
    rt, up, _ = make_runtime()
    rt.apply(instances(9001, 9002))
    up.script(A, REFUSED)
    up.script(B, REFUSED)
    up.scripts[rt.snapshot.services["svc"].instances[0].address] = [REFUSED]
    answers = [await call(ProxyApp(rt), "POST", "/svc/x", body=[b"{}"]) for _ in range(2)]
    assert [a.status for a in answers] == [502, 502]
    up.script(B, Reply(201))
    answer = await call(ProxyApp(rt), "POST", "/svc/x", body=[b"hello"])
    assert answer.status == 201
    assert up.calls[-1].address == B and up.calls[-1].body == b"hello"
    assert metric(rt, "gateway_retries_total", service="svc", reason="connect_refused") >= 1


async def test_reset_after_sending_a_post_is_not_retried() -> None:
    rt, up, log = make_runtime()
    rt.apply(instances(9001, 9002))
    up.script(A, RESET)
    up.script(B, RESET)
    answer = await call(ProxyApp(rt), "POST", "/svc/x", body=[b"x"])
    assert answer.status == 502 and answer.json()["error"] == "bad_gateway"
    assert len(up.calls) == 1
    assert access_lines(log)[0]["retry_refused"] == "not_idempotent"


async def test_reset_after_sending_a_get_is_retried_once_by_default() -> None:
    rt, up, _ = make_runtime()
    rt.apply(instances(9001, 9002))
    up.script(A, RESET)
    up.script(B, RESET)
    first = up.calls
    answer = await call(ProxyApp(rt), "GET")
    assert answer.status == 502
    assert {c.address for c in first} == {A, B}
    up.script(A, Reply(200))
    up.script(B, RESET)
    results = [await call(ProxyApp(rt), "GET") for _ in range(2)]
    assert [r.status for r in results] == [200, 200]


async def test_status_retry_is_opt_in_and_only_for_idempotent_methods() -> None:
    rt, up, log = make_runtime(retry={"retry_on_status": [503]})
    rt.apply(instances(9001, 9002))
    up.script(A, Reply(503))
    up.script(B, Reply(200))
    app = ProxyApp(rt)
    assert [(await call(app, "GET")).status for _ in range(2)] == [200, 200]
    gets_to_a = up.hits(A)
    assert gets_to_a >= 1
    assert metric(rt, "gateway_retries_total", service="svc", reason="status_503") == gets_to_a
    post = await call(app, "POST", body=[b"x"])
    post2 = await call(app, "POST", body=[b"x"])
    assert sorted([post.status, post2.status]) == [200, 503]
    assert "not_idempotent" in [line.get("retry_refused") for line in access_lines(log)]


async def test_max_retries_bounds_the_attempts() -> None:
    rt, up, log = make_runtime(retry={"max_retries": 1})
    rt.apply(instances(9001, 9002, 9003))
    for addr in (A, B, C):
        up.script(addr, RESET)
    answer = await call(ProxyApp(rt), "GET")
    assert answer.status == 502 and len(up.calls) == 2
    assert access_lines(log)[0]["retry_refused"] == "max_retries"
    assert metric(rt, "gateway_retries_refused_total", service="svc", reason="max_retries") == 1


async def test_retry_budget_refuses_retries_beyond_its_share() -> None:
    rt, up, log = make_runtime(retry={"budget_percent": 0, "min_retry_concurrency": 0})
    rt.apply(instances(9001, 9002))
    up.script(A, RESET)
    up.script(B, RESET)
    answer = await call(ProxyApp(rt), "GET")
    assert answer.status == 502 and len(up.calls) == 1
    assert access_lines(log)[0]["retry_refused"] == "budget_exhausted"
    assert metric(rt, "gateway_retries_refused_total", service="svc", reason="budget_exhausted") == 1
    guard = rt.guards["svc"]
    assert guard.budget.retries_active == 0 and guard.budget.requests_active == 0


async def test_consecutive_gateway_failures_eject_the_instance() -> None:
    rt, up, _ = make_runtime(outlier={"consecutive_failures": 2}, retry={"max_retries": 0})
    rt.apply(instances(9001, 9002))
    up.script(A, Reply(502))
    up.script(B, Reply(200))
    app = ProxyApp(rt)
    statuses = [(await call(app)).status for _ in range(4)]
    assert statuses.count(502) == 2
    assert metric(rt, "gateway_instance_ejections_total", service="svc", instance=A) == 1
    after = [(await call(app)).status for _ in range(4)]
    assert after == [200] * 4


async def test_no_healthy_instance_is_503_with_retry_after() -> None:
    rt, up, _ = make_runtime()
    rt.apply({"svc": ()})
    answer = await call(ProxyApp(rt))
    assert answer.status == 503 and answer.headers[b"retry-after"] == b"5"
    assert answer.json()["error"] == "no_healthy_instance" and not up.calls


async def test_instance_at_capacity_sends_the_request_to_another_instance() -> None:
    rt, up, _log = make_runtime(limits={"max_requests_per_instance": 1})
    rt.apply(instances(9001, 9002))
    hang = Hang()
    up.script(A, hang)
    app = ProxyApp(rt)
    first = asyncio.create_task(call(app))  # round robin starts with A, which hangs
    await hang.entered.wait()
    later = [await call(app) for _ in range(3)]  # A's turns come round: it is full, B answers
    assert [a.status for a in later] == [200, 200, 200]
    assert up.hits(A) == 1 and up.hits(B) == 3
    assert metric(rt, "gateway_overflow_total", service="svc") >= 1
    hang.release.set()
    assert (await first).status == 200


async def test_every_instance_full_is_503_overloaded_with_the_configured_retry_after() -> None:
    rt, up, _log = make_runtime(limits={"max_requests_per_instance": 1, "retry_after": 7})
    rt.apply(instances(9001, 9002))
    hangs = [Hang(), Hang()]
    up.script(A, hangs[0])
    up.script(B, hangs[1])
    app = ProxyApp(rt)
    busy = [asyncio.create_task(call(app)) for _ in range(2)]
    await asyncio.gather(*(h.entered.wait() for h in hangs))
    answer = await call(app)
    assert answer.status == 503 and answer.headers[b"retry-after"] == b"7"
    assert answer.json()["error"] == "overloaded"
    assert metric(rt, "gateway_overflow_total", service="svc") == 2
    for h in hangs:
        h.release.set()
    assert [(await t).status for t in busy] == [200, 200]
    assert rt.guards["svc"].limits.requests == 0


async def test_service_cap_is_503_at_once() -> None:
    rt, up, _ = make_runtime(limits={"max_requests_per_service": 1, "retry_after": 3})
    rt.apply(instances(9001, 9002))
    hang = Hang()
    up.script(A, hang)
    app = ProxyApp(rt)
    busy = asyncio.create_task(call(app))
    await hang.entered.wait()
    answer = await call(app)
    assert answer.status == 503 and answer.headers[b"retry-after"] == b"3"
    assert up.hits(B) == 0
    hang.release.set()
    await busy


async def test_pending_cap_bounds_requests_waiting_for_a_connection() -> None:
    rt, up, _ = make_runtime(max_connections_per_instance=1, limits={"max_pending_per_instance": 1})
    rt.apply(instances(9001))
    hangs = [Hang(), Hang()]
    up.scripts[A] = [hangs[0], hangs[1], Reply()]
    app = ProxyApp(rt)
    busy = [asyncio.create_task(call(app)) for _ in range(2)]  # one holds the connection, one waits
    await asyncio.gather(*(h.entered.wait() for h in hangs))
    assert rt.guards["svc"].limits.pending == 1
    answer = await call(app)
    assert answer.status == 503 and answer.json()["error"] == "overloaded"
    for h in hangs:
        h.release.set()
    await asyncio.gather(*busy)
    assert rt.guards["svc"].limits.pending == 0


async def test_per_try_timeout_bounds_each_attempt_and_retries_when_opted_in() -> None:
    rt, up, _log = make_runtime(retry={"per_try_timeout": 0.05, "retry_on_timeout": True})
    rt.apply(instances(9001, 9002))
    up.script(A, Hang())
    up.script(B, Reply(200))
    answer = await call(ProxyApp(rt))
    assert answer.status == 200
    assert metric(rt, "gateway_retries_total", service="svc", reason="read_timeout") == 1


async def test_per_try_timeout_without_retry_on_timeout_is_504() -> None:
    rt, up, log = make_runtime(retry={"per_try_timeout": 0.05})
    rt.apply(instances(9001, 9002))
    up.script(A, Hang())
    up.script(B, Hang())
    answer = await call(ProxyApp(rt))
    assert answer.status == 504 and answer.json()["error"] == "gateway_timeout"
    line = access_lines(log)[0]
    assert line["error"] == "per_try_timeout" and line["retry_refused"] == "timeout_not_retriable"


async def test_total_deadline_is_504_and_never_retried() -> None:
    rt, up, log = make_runtime(timeouts={"total": 0.05}, retry={"retry_on_timeout": True})
    rt.apply(instances(9001, 9002))
    up.script(A, Hang())
    up.script(B, Hang())
    answer = await call(ProxyApp(rt))
    assert answer.status == 504 and len(up.calls) == 1
    assert access_lines(log)[0]["error"] == "deadline"


async def in_panic() -> tuple[Runtime, FakeUpstream, ProxyApp]:
    """Two instances that answer 502 until both are ejected: the service is in panic mode."""
    rt, up, _ = make_runtime(
        outlier={"consecutive_failures": 1, "max_ejection_percent": 100}, retry={"max_retries": 0}
    )
    rt.apply(instances(9001, 9002))
    up.script(A, Reply(502))
    up.script(B, Reply(502))
    app = ProxyApp(rt)
    for _ in range(3):
        await call(app)
    assert metric(rt, "gateway_service_panic", service="svc") == 1
    return rt, up, app


async def test_panic_state_survives_a_swap_and_leaving_it_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    rt, up, app = await in_panic()
    rt.apply(instances(9001, 9002, 9003))  # a swap: a new route, the same guard
    assert rt.guards["svc"].in_panic
    up.script(C, Reply(200))
    with caplog.at_level(logging.WARNING, logger="msa_gateway.proxy"):
        rt.apply(instances(9003))  # the ejected ones left: the swap itself ends panic mode
        assert metric(rt, "gateway_service_panic", service="svc") == 0
        assert "service left panic mode" in caplog.text
        assert (await call(app)).status == 200
    assert caplog.text.count("service left panic mode") == 1


async def test_a_service_that_disappears_in_panic_drops_its_gauge(caplog: pytest.LogCaptureFixture) -> None:
    rt, _, _ = await in_panic()
    with caplog.at_level(logging.WARNING, logger="msa_gateway.registry"):
        rt.apply({})
    assert rt.metrics.registry.get_sample_value("gateway_service_panic", {"service": "svc"}) is None
    assert "service left panic mode" in caplog.text and "svc" not in rt.guards


async def test_least_request_load_survives_a_swap() -> None:
    rt, up, _ = make_runtime(balancer="least_request")
    rt.apply(instances(9001, 9002))
    hangs = {A: Hang(), B: Hang()}
    for addr, hang in hangs.items():
        up.scripts[addr] = [hang, Reply(200)]
    app = ProxyApp(rt)
    busy = asyncio.create_task(call(app))
    waits = {asyncio.create_task(h.entered.wait()): addr for addr, h in hangs.items()}
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    busy_addr = waits[done.pop()]
    rt.apply(instances(9001, 9002))  # swap: same instances, new route and balancer objects
    idle_addr = B if busy_addr == A else A
    up.scripts[idle_addr] = [Reply(200)]
    for _ in range(10):
        assert (await call(app)).status == 200
        assert up.calls[-1].address == idle_addr
    hangs[busy_addr].release.set()
    assert (await busy).status == 200


async def test_client_disconnect_mid_stream_closes_the_upstream_response() -> None:
    rt, up, log = make_runtime()
    rt.apply(instances(9001))
    up.script(A, Reply(200, chunks=[b"first"], hold=True))
    gone = asyncio.Event()

    def on_send(message: dict[str, object]) -> None:
        if message.get("body") == b"first":
            gone.set()

    answer = await call(ProxyApp(rt), disconnect=gone, on_send=on_send)
    assert answer.body == b"first"
    assert up.responses[-1].closed
    assert access_lines(log)[0]["status"] == 499


async def test_declared_body_over_max_body_size_is_413_before_anything_is_sent() -> None:
    rt, up, _ = make_runtime(max_body_size=4)
    rt.apply(instances(9001))
    answer = await call(ProxyApp(rt), "POST", headers=[(b"content-length", b"10")], body=[b"0123456789"])
    assert answer.status == 413 and answer.headers[b"connection"] == b"close" and not up.calls


async def test_chunked_body_over_max_body_size_is_413_while_streaming() -> None:
    rt, _up, log = make_runtime(max_body_size=4)
    rt.apply(instances(9001))
    answer = await call(
        ProxyApp(rt), "POST", headers=[(b"transfer-encoding", b"chunked")], body=[b"012", b"345", b"678"]
    )
    assert answer.status == 413
    assert access_lines(log)[0]["error"] == "payload_too_large"


async def test_stalled_body_is_408_and_nothing_reaches_the_instance() -> None:
    rt, up, log = make_runtime()
    rt.settings = rt.settings.model_copy(update={"body_timeout": 0.05})
    rt.apply(instances(9001))
    answer = await call(
        ProxyApp(rt), "POST", headers=[(b"content-length", b"10")], body=[b"abc"], body_ends=False
    )
    assert answer.status == 408 and answer.headers[b"connection"] == b"close"
    assert not up.calls and access_lines(log)[0]["error"] == "request_timeout"


async def test_upstream_failure_mid_body_ends_the_response_without_a_clean_end() -> None:
    rt, up, log = make_runtime()
    rt.apply(instances(9001))
    up.script(A, Reply(200, chunks=[b"part", b"more"], fail_after=UpstreamError("reset", "reset")))
    answer = await call(ProxyApp(rt))
    assert answer.status == 200 and answer.body == b"partmore"
    bodies = [m for m in answer.messages if m["type"] == "http.response.body"]
    assert all(m.get("more_body") for m in bodies)  # never a final message: the server closes
    assert access_lines(log)[0]["error"] == "reset"


async def test_read_timeout_from_the_seam_is_504() -> None:
    rt, up, _log = make_runtime()
    rt.apply(instances(9001))
    up.script(A, UpstreamTimeout("slow", "read_timeout"))
    answer = await call(ProxyApp(rt))
    assert answer.status == 504
    assert metric(rt, "gateway_upstream_errors_total", service="svc", kind="read_timeout") == 1


async def test_a_bug_before_the_answer_is_a_json_500_logged_with_its_trace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rt, _up, log = make_runtime()
    rt.apply(instances(9001))
    app = ProxyApp(rt)

    class Broken:
        """A balancer with a bug."""

        def pick(self, eligible: object) -> None:
            raise RuntimeError("a bug at 10.0.0.7")

    rt.snapshot.services["svc"].balancer = Broken()  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR, "msa_gateway.proxy"):
        answer = await call(app, headers=[(b"x-request-id", b"rid-7")])
    assert answer.status == 500
    assert answer.json() == {"error": "internal_error", "detail": "unexpected error", "request_id": "rid-7"}
    assert b"a bug" not in answer.body and b"10.0.0.7" not in answer.body  # never a trace or an address
    (record,) = [r for r in caplog.records if r.message == "proxy_request_failed"]
    assert record.exc_info is not None  # ...but the trace is in the log
    (line,) = access_lines(log)
    assert line["status"] == 500 and line["error"] == "internal_error"
    assert rt.metrics.requests.in_flight == 0


async def test_a_bug_after_the_answer_began_ends_it_without_a_clean_end() -> None:
    rt, up, log = make_runtime()
    rt.apply(instances(9001))
    up.script(A, Reply(200, chunks=[b"part", b"more"]))

    def fail_on_more(message: dict[str, object]) -> None:
        if message.get("more_body"):
            raise RuntimeError("a bug while streaming")

    answer = await call(ProxyApp(rt), on_send=fail_on_more)
    assert answer.status == 200
    bodies = [m for m in answer.messages if m["type"] == "http.response.body"]
    assert all(m.get("more_body") for m in bodies)  # no final message: the connection is closed, not ended
    assert access_lines(log)[0]["error"] == "internal_error"
