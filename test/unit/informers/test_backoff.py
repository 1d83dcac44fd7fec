"""Reflector backoff and error classification (pure logic, no server)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.informers import Backoff
from aviator.informers.reflector import is_expired, is_retryable, is_too_large_resource_version
from aviator.kube.client import ApiError


def test_backoff_doubles_caps_and_resets_after_healthy_stretch() -> None:
    b = Backoff()
    delays = [b.failure(float(t)) for t in range(8)]
    assert delays == [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]
    assert b.failure(8.0 + 121.0) == 0.8  # two minutes without failure: start over
    b.reset()
    assert b.failure(130.0) == 0.8


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(0, 300, allow_nan=False), min_size=1, max_size=30),
    st.floats(0, 1),
    st.integers(0, 2**32),
)
def test_backoff_stays_within_bounds(gaps: list[float], jitter: float, seed: int) -> None:
    b = Backoff(jitter=jitter, rng=random.Random(seed))
    now = 0.0
    last: float | None = None
    base = 0.0  # the un-jittered delay the model expects
    for gap in gaps:
        now += gap
        base = 0.8 if last is None or now - last > 120.0 else min(base * 2, 30.0)
        last = now
        delay = b.failure(now)
        assert base <= delay <= min(base * (1 + jitter), 30.0) + 1e-9


def status(code: int, reason: str = "", message: str = "") -> ApiError:
    return ApiError(code, {"code": code, "reason": reason, "message": message})


def test_expired_answers_are_recognised_in_any_wrapping() -> None:
    assert is_expired(status(410))
    assert is_expired(status(500, "Expired"))
    assert is_expired(status(500, "", "too old resource version: 5 (9)"))
    assert not is_expired(status(500, "InternalError", "etcd down"))
    assert is_too_large_resource_version(
        status(504, "Timeout", "Too large resource version: 99, current: 10")
    )
    assert not is_too_large_resource_version(status(410))


def test_only_throttling_and_server_errors_are_retryable() -> None:
    assert is_retryable(status(429))
    assert is_retryable(status(500))
    assert is_retryable(status(503))
    assert not is_retryable(status(403))
    assert not is_retryable(status(410))
