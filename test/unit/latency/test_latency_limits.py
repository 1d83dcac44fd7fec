"""Flood limits of the agent stream (pure bookkeeping, on a fake clock)."""

from __future__ import annotations

from aviator.latency.limits import (
    REVIEW_RATE,
    SOURCE_REVIEW_RATE,
    TOO_MANY_CONNECTIONS,
    TOO_MANY_FOR_NODE,
    TOO_MANY_FROM_SOURCE,
    StreamGate,
    StreamLimits,
    TokenBucket,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(2.0, 3, clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_s() == 0.5
    clock.now = 0.5
    assert bucket.take() and not bucket.take()
    clock.now = 100.0  # never more than the burst
    assert sum(bucket.take() for _ in range(10)) == 3


def test_connections_per_source_per_node_and_in_total() -> None:
    gate = StreamGate(StreamLimits(connections=3, connections_per_source=2, connections_per_node=1))
    assert gate.enter("a") is None and gate.enter("a") is None
    assert gate.enter("a") == TOO_MANY_FROM_SOURCE
    assert gate.enter("b") is None
    assert gate.enter("c") == TOO_MANY_CONNECTIONS
    gate.leave("a")
    assert gate.enter("c") is None
    assert gate.open == 3
    assert gate.enter_node("n1") is None
    assert gate.enter_node("n1") == TOO_MANY_FOR_NODE
    gate.leave_node("n1")
    assert gate.enter_node("n1") is None
    for source in ("a", "b", "c"):
        gate.leave(source)
    assert gate.open == 0 and not gate._by_source


def test_reviews_are_rationed_per_source_and_in_total() -> None:
    clock = Clock()
    limits = StreamLimits(
        reviews_per_s=1.0, reviews_burst=3, source_reviews_per_s=0.5, source_reviews_burst=2
    )
    gate = StreamGate(limits, clock)
    assert gate.review("a") == (None, 0.0)
    assert gate.review("a") == (None, 0.0)
    reason, wait = gate.review("a")
    assert reason == SOURCE_REVIEW_RATE and wait == 2.0
    assert gate.review("b") == (None, 0.0)
    reason, wait = gate.review("c")  # c has its own allowance, but the total is spent
    assert reason == REVIEW_RATE and wait == 1.0
    clock.now = 2.0
    assert gate.review("a") == (None, 0.0)


def test_per_source_state_is_bounded() -> None:
    gate = StreamGate(StreamLimits(max_sources=10, reviews_burst=10**6))
    for i in range(1000):
        gate.review(f"10.0.{i // 256}.{i % 256}")
    assert len(gate._source_reviews) == 10
