"""The gateway's token buckets, on a clock the test moves."""

from __future__ import annotations

import pytest

from gateway.ratelimit import TokenBuckets


def test_a_burst_then_one_token_per_interval_and_keys_apart() -> None:
    now = [100.0]
    buckets = TokenBuckets(rate=2.0, burst=3.0, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token every 0.5 s
    assert buckets.take("b") == 0.0  # another client has its own bucket
    now[0] += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(0.5)
    now[0] += 60  # a long pause saves up no more than the burst
    assert [buckets.take("a") for _ in range(4)][-1] == pytest.approx(0.5)
