"""DelayingQueue: add_after ordering on a fake clock, earliest time wins, real timers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.workqueue import DelayingQueue, FakeClock
from aviator.workqueue.clock import Timer
from aviator.workqueue.delaying_queue import TIMER_SLACK_S


def drain_now(q: DelayingQueue[str]) -> list[str]:
    out = []
    while (item := q.get_nowait()) is not None:
        out.append(item)
        q.done(item)
    return out


def test_items_come_out_in_ready_time_order() -> None:
    clock = FakeClock()
    q: DelayingQueue[str] = DelayingQueue(clock=clock)
    q.add_after("late", 3.0)
    q.add_after("early", 1.0)
    q.add_after("middle", 2.0)
    q.add_after("also-early", 1.0)
    assert drain_now(q) == []
    clock.advance(0.999)
    assert drain_now(q) == []
    clock.advance(0.001)
    assert drain_now(q) == ["early", "also-early"]
    clock.advance(5)
    assert drain_now(q) == ["middle", "late"]
    assert q.waiting() == 0
    assert clock.pending_timers() == 0


def test_earliest_time_wins_for_a_duplicate() -> None:
    clock = FakeClock()
    q: DelayingQueue[str] = DelayingQueue(clock=clock)
    q.add_after("x", 10)
    q.add_after("x", 5)  # moves it earlier
    q.add_after("x", 20)  # does not move it later
    assert q.waiting() == 1
    clock.advance(5)
    assert drain_now(q) == ["x"]
    clock.advance(20)
    assert drain_now(q) == [], "added once only"


def test_non_positive_delay_adds_now() -> None:
    q: DelayingQueue[str] = DelayingQueue(clock=FakeClock())
    q.add_after("a", 0)
    q.add_after("b", -1)
    assert drain_now(q) == ["a", "b"]


def test_a_waiting_item_collapses_with_a_pending_add() -> None:
    clock = FakeClock()
    q: DelayingQueue[str] = DelayingQueue(clock=clock)
    q.add("x")
    q.add_after("x", 1)
    clock.advance(1)
    assert len(q) == 1


def test_shutdown_drops_waiting_items_and_timers() -> None:
    clock = FakeClock()
    q: DelayingQueue[str] = DelayingQueue(clock=clock)
    q.add_after("x", 1)
    q.shutdown()
    assert clock.pending_timers() == 0
    q.add_after("y", 1)
    clock.advance(2)
    assert len(q) == 0


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abcdefgh"), st.integers(min_value=1, max_value=50)),
        min_size=1,
        max_size=30,
    )
)
def test_an_item_is_available_exactly_from_its_earliest_ready_time(
    adds: list[tuple[str, int]],
) -> None:
    clock = FakeClock()
    q: DelayingQueue[str] = DelayingQueue(clock=clock)
    earliest: dict[str, int] = {}
    for item, delay in adds:
        q.add_after(item, delay)
        earliest[item] = min(delay, earliest.get(item, delay))
    seen: set[str] = set()
    for t in range(51):
        if t:
            clock.advance(1)
        came = drain_now(q)
        assert len(came) == len(set(came))
        assert {i for i in came} == {i for i, at in earliest.items() if at == t}
        assert sorted(came, key=lambda i: earliest[i]) == came
        seen |= set(came)
    assert seen == set(earliest)


async def test_real_clock_timer_adds_the_item() -> None:
    q: DelayingQueue[str] = DelayingQueue()
    q.add_after("x", 0.01)
    assert len(q) == 0
    assert await asyncio.wait_for(q.get(), 2) == "x"


class EarlyClock(FakeClock):
    """Timers fire half a millisecond early, as uvloop's may (libuv rounds delays to
    whole milliseconds); fails a test that arms more than `max_timers`."""

    def __init__(self, max_timers: int) -> None:
        super().__init__()
        self.armed = 0
        self.max_timers = max_timers

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        self.armed += 1
        assert self.armed <= self.max_timers, "the queue keeps re-arming its timer"
        return super().call_later(delay_s - TIMER_SLACK_S / 2, callback)


def test_a_timer_that_fires_early_takes_its_items_without_rearming() -> None:
    items = [f"i{n}" for n in range(50)]
    clock = EarlyClock(max_timers=2 * len(items))
    q: DelayingQueue[str] = DelayingQueue(clock=clock)
    for n, item in enumerate(items):
        q.add_after(item, 0.01 * (n + 1))
    came: list[str] = []
    for _ in items:
        clock.advance(0.01)
        came += drain_now(q)
    assert came == items
    assert clock.armed <= len(items) + 1


class TimerCountingQueue(DelayingQueue[int]):
    fired = 0

    def _on_timer(self) -> None:
        self.fired += 1
        super()._on_timer()


async def test_real_loop_timers_fire_about_once_per_item() -> None:
    """On the suite's loop (uvloop, as the controller runs): no spinning while the
    loop's rounded-off timer is ahead of the monotonic clock."""
    q = TimerCountingQueue()
    n = 100
    for i in range(n):
        q.add_after(i, 0.0002 * (i + 1) + 0.001)  # spread over 21 ms: one timer each
    got = [await asyncio.wait_for(q.get(), 2) for _ in range(n)]
    assert sorted(got) == list(range(n))
    assert q.fired <= n + 1
