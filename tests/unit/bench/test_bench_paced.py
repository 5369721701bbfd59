"""``bench.paced``: reading a response's length, the per-request figures, and the arguments it refuses."""

from __future__ import annotations

import pytest
from bench.paced import Paced, content_length, parse_args, row


def test_the_body_length_is_read_from_the_head_whatever_the_case() -> None:
    head = b"HTTP/1.1 200 OK\r\nServer: nginx\r\ncontent-LENGTH: 11\r\n\r\n"
    assert content_length(head) == 11
    assert content_length(b"HTTP/1.1 204 No Content\r\nServer: nginx\r\n\r\n") == 0


def test_cpu_is_a_share_of_one_core_and_microseconds_per_answered_request() -> None:
    p = Paced("gateway", 1000.0, answered=5000, seconds=5.0, cpu=1.0, latencies=(0.0002, 0.0004))
    assert p.cpu_share == pytest.approx(0.2)
    assert p.cpu_us_per_request == pytest.approx(200.0)
    line = row(p)
    assert line.split()[:5] == ["gateway", "1,000", "1,000", "20.0%", "200"]
    assert Paced("g", 1.0, 0, 1.0, 0.1, ()).cpu_us_per_request == 0.0  # nothing answered: no division


def test_rates_and_variants_are_parsed_and_a_rate_of_zero_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = parse_args(["--rates", "100,2500", "--extra-gateway", "bp50:BUSY_POLL_US=50"])
    assert args.rates == [100.0, 2500.0] and args.extra_gateway == ["bp50:BUSY_POLL_US=50"]
    with pytest.raises(SystemExit):
        parse_args(["--rates", "100,0"])
    assert "must be positive" in capsys.readouterr().err
