"""Time for the queues: a Clock reads monotonic seconds and schedules callbacks.

Queues never sleep; they ask their clock to call them back. `RealClock` uses the running
event loop's timers; `FakeClock` only moves when a test calls `advance`, so delaying and
rate-limited behaviour is tested without waiting on real time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    """A scheduled callback that can be called off."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Monotonic seconds and one-shot callbacks."""

    def now(self) -> float: ...

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer: ...


class RealClock:
    """time.monotonic and the running loop's call_later (so callers must be on a loop)."""

    def now(self) -> float:
        return time.monotonic()

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(max(0.0, delay_s), callback)


class FakeTimer:
    """A FakeClock callback; cancelled timers are skipped when their time comes."""

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A clock that stands still until `advance` moves it, firing due callbacks in order.

    Callbacks see `now()` equal to their own due time, and callbacks they schedule inside
    the advanced span fire in the same `advance` call.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        timer = FakeTimer(self._now + max(0.0, delay_s), callback)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer

    def advance(self, delta_s: float) -> None:
        """Move time forward by delta_s (≥ 0), running every callback that falls due."""
        if delta_s < 0:
            raise ValueError("a monotonic clock cannot go back")
        target = self._now + delta_s
        while self._timers and self._timers[0][0] <= target:
            when, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, when)
            timer.callback()
        self._now = target

    def pending_timers(self) -> int:
        """Scheduled callbacks not yet fired or cancelled."""
        return sum(1 for _, _, t in self._timers if not t.cancelled)
