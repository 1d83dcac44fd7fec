"""When a latency-aware policy is looked at between evaluations (cadence.look_wait)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aviator.reconcilers.cadence import LOOKS_PER_INTERVAL, look_wait


@given(
    interval=st.floats(0.5, 600, allow_nan=False),
    elapsed=st.floats(0, 1.2, allow_nan=False),
)
def test_looks_come_every_quarter_interval_and_stop_before_the_evaluation(
    interval: float, elapsed: float
) -> None:
    """From any moment in an interval the next look is at most a quarter interval away,
    on a quarter boundary; none is asked for past the last quarter (the evaluation is
    next)."""
    last, now = 1000.0, 1000.0 + elapsed * interval
    wait = look_wait(last_evaluation=last, interval_s=interval, now=now)
    step = interval / LOOKS_PER_INTERVAL
    if wait is None:
        assert now >= last + (LOOKS_PER_INTERVAL - 1) * step - 0.05 * step - 1e-6
        return
    assert 0 < wait <= step * 1.05 + 1e-9
    quarters = (now + wait - last) / step
    assert abs(quarters - round(quarters)) < 1e-6
    assert 1 <= round(quarters) < LOOKS_PER_INTERVAL


def test_a_look_timer_a_little_early_does_not_ask_for_the_same_look_again() -> None:
    # Woken 1 % of a quarter early for the first look: the next is the second.
    wait = look_wait(last_evaluation=0.0, interval_s=4.0, now=0.99)
    assert wait is not None and abs(wait - 1.01) < 1e-9
