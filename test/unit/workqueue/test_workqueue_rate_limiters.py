"""Rate limiter properties: exponential backoff, token bucket, max-of."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.workqueue import (
    BucketRateLimiter,
    FakeClock,
    ItemExponentialFailureRateLimiter,
    MaxOfRateLimiter,
    RateLimitingQueue,
    default_controller_rate_limiter,
)

# -- per-item exponential -------------------------------------------------------------


def test_exponential_doubles_from_base() -> None:
    limiter = ItemExponentialFailureRateLimiter(0.005, 1000)
    assert [limiter.when("k") for _ in range(4)] == [0.005, 0.01, 0.02, 0.04]
    assert limiter.num_requeues("k") == 4
    assert limiter.when("other") == 0.005


@settings(max_examples=300)
@given(
    base=st.floats(min_value=1e-4, max_value=1.0),
    cap=st.floats(min_value=1.0, max_value=5000.0),
    failures=st.integers(min_value=1, max_value=1200),
)
def test_exponential_is_monotone_capped_and_forget_resets(
    base: float, cap: float, failures: int
) -> None:
    limiter = ItemExponentialFailureRateLimiter(base, cap)
    delays = [limiter.when("k") for _ in range(failures)]
    assert all(a <= b for a, b in itertools.pairwise(delays))
    assert all(base <= d <= cap for d in delays)
    assert delays[-1] == min(cap, base * 2.0 ** min(failures - 1, 100))
    assert limiter.num_requeues("k") == failures
    limiter.forget("k")
    assert limiter.num_requeues("k") == 0
    assert limiter.when("k") == base


def test_exponential_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        ItemExponentialFailureRateLimiter(0, 1)
    with pytest.raises(ValueError):
        ItemExponentialFailureRateLimiter(2, 1)


# -- token bucket -----------------------------------------------------------------------


def test_bucket_lets_a_burst_through_then_spaces_at_qps() -> None:
    clock = FakeClock()
    limiter = BucketRateLimiter(qps=10, burst=100, clock=clock.now)
    delays = [limiter.when(i) for i in range(103)]
    assert delays[:100] == [0.0] * 100
    assert delays[100:] == pytest.approx([0.1, 0.2, 0.3])
    clock.advance(1.0)  # 10 tokens refilled, 3 were borrowed
    assert limiter.when("x") == 0.0
    assert limiter.num_requeues("x") == 0


@settings(max_examples=300)
@given(
    qps=st.floats(min_value=0.5, max_value=1000),
    burst=st.integers(min_value=1, max_value=50),
    calls=st.integers(min_value=1, max_value=200),
)
def test_bucket_never_lets_more_than_burst_through_at_once(
    qps: float, burst: int, calls: int
) -> None:
    limiter = BucketRateLimiter(qps=qps, burst=burst, clock=FakeClock().now)
    immediate = sum(1 for i in range(calls) if limiter.when(i) == 0.0)
    assert immediate == min(calls, burst)


@settings(max_examples=200, deadline=None)
@given(
    qps=st.floats(min_value=0.5, max_value=100),
    burst=st.integers(min_value=1, max_value=20),
    gaps=st.lists(st.floats(min_value=0, max_value=2.0), min_size=1, max_size=120),
)
def test_bucket_schedules_at_most_burst_plus_qps_per_window(
    qps: float, burst: int, gaps: list[float]
) -> None:
    """Over any window of the granted times, count ≤ burst + qps · window length."""
    clock = FakeClock()
    limiter = BucketRateLimiter(qps=qps, burst=burst, clock=clock.now)
    granted = []
    for gap in gaps:
        clock.advance(gap)
        granted.append(clock.now() + limiter.when("k"))
    granted.sort()
    eps = 1e-6
    for i in range(len(granted)):
        for j in range(i, len(granted)):
            assert j - i + 1 <= burst + qps * (granted[j] - granted[i]) + eps


def test_bucket_without_limit_never_waits() -> None:
    limiter = BucketRateLimiter(qps=math.inf, burst=1)
    assert all(limiter.when(i) == 0.0 for i in range(1000))


def test_bucket_ignores_a_clock_stepping_back() -> None:
    now = [100.0]
    limiter = BucketRateLimiter(qps=1, burst=1, clock=lambda: now[0])
    assert limiter.when("a") == 0.0
    now[0] = 50.0
    assert limiter.when("b") == pytest.approx(1.0)


# -- max-of ------------------------------------------------------------------------------


@settings(max_examples=200)
@given(st.lists(st.sampled_from("abc"), min_size=1, max_size=150))
def test_max_of_is_the_max_of_its_parts(items: list[str]) -> None:
    clock = FakeClock()
    combined = MaxOfRateLimiter(
        ItemExponentialFailureRateLimiter(0.01, 5), BucketRateLimiter(5, 10, clock=clock.now)
    )
    exp_twin = ItemExponentialFailureRateLimiter(0.01, 5)
    bucket_twin = BucketRateLimiter(5, 10, clock=clock.now)
    for item in items:
        assert combined.when(item) == max(exp_twin.when(item), bucket_twin.when(item))
        assert combined.num_requeues(item) == exp_twin.num_requeues(item)
    combined.forget("a")
    assert combined.num_requeues("a") == 0


def test_default_controller_rate_limiter() -> None:
    clock = FakeClock()
    limiter = default_controller_rate_limiter(clock=clock.now)
    assert limiter.when("k") == 0.005
    for i in range(99):
        limiter.when(i)
    assert limiter.when("other") == pytest.approx(0.1), "the bucket of 100 is spent"


def test_rate_limiting_queue_retries_with_backoff_and_forgets() -> None:
    clock = FakeClock()
    q: RateLimitingQueue[str] = RateLimitingQueue(clock=clock)
    q.add_rate_limited("k")
    assert q.num_requeues("k") == 1
    clock.advance(0.004)
    assert len(q) == 0
    clock.advance(0.001)
    assert q.get_nowait() == "k"
    q.add_rate_limited("k")  # second failure: 10 ms
    q.done("k")
    clock.advance(0.009)
    assert len(q) == 0
    clock.advance(0.001)
    assert len(q) == 1
    q.forget("k")
    assert q.num_requeues("k") == 0
    q.shutdown()
    q.add_rate_limited("k")
    assert q.num_requeues("k") == 0, "refused while shutting down"
