"""Refusals are logged at a bounded rate (supervisor/rpc/refusals.py)."""

from __future__ import annotations

import logging

import pytest

from supervisor.rpc.refusals import RefusalLog, TokenBucket


def test_the_bucket_admits_a_burst_then_its_rate_and_counts_the_rest() -> None:
    bucket = TokenBucket(rate=1.0, burst=3)
    assert [bucket.admit(0.0) for _ in range(5)] == [(True, 0)] * 3 + [(False, 0)] * 2
    assert bucket.admit(0.5) == (False, 0)  # half a token
    assert bucket.admit(1.0) == (True, 3)  # one more, and it tells what it turned away
    assert bucket.admit(100.0) == (True, 0)
    assert bucket.tokens == 2.0  # refilled to the burst, never past it


def test_a_bad_bucket_is_refused() -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate=0.0)


def test_a_flood_of_refusals_logs_a_few_lines(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    refusals = RefusalLog(TokenBucket(rate=2.0, burst=5), clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="train_supervisor"):
        for i in range(10_000):
            now[0] = i * 0.001  # 10 s of calls, 1,000 a second
            refusals.refusal("/x/Y", "ipv4:127.0.0.1:1", "INVALID_ARGUMENT", "pid 0")
    assert refusals.refused == 10_000
    assert 5 <= len(caplog.records) <= 5 + 2 * 10 + 1
    assert "refusals suppressed" in caplog.records[-1].getMessage()
    assert all(record.exc_info is None for record in caplog.records)
