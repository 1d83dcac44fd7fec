"""A work queue that can add an item later: `add_after(item, delay_s)`.

Waiting items sit in a min-heap by ready time; one clock timer is armed for the earliest
and, when it fires, every item whose time has come is `add`ed (then the usual queue
semantics apply: collapse, re-queue after done). An item waits at most once: adding it
after a shorter delay moves it earlier, a longer delay leaves it where it is (earliest
time wins). A plain `add` does not cancel a pending `add_after`. With the default
`RealClock`, `add_after` must be called on the running event loop (it arms a loop timer).

A timer may fire a little before its time by the queue's clock: uvloop (libuv) rounds
delays to whole milliseconds against a loop time it reads once per iteration. Items due
within `TIMER_SLACK_S` are taken when it fires; re-arming for the sliver left instead
arms a zero-delay timer, again and again until the clock catches up (dozens of loop
turns per item, a few percent of a busy controller's CPU).
"""

from __future__ import annotations

import heapq
import itertools

from aviator.workqueue.clock import Clock, Timer
from aviator.workqueue.metrics import MetricsProvider
from aviator.workqueue.queue import Queue, T

TIMER_SLACK_S = 0.001  # how early a loop timer may fire: libuv's millisecond


class DelayingQueue(Queue[T]):
    """Queue plus add_after; timers come from the queue's clock."""

    def __init__(
        self,
        name: str = "",
        *,
        clock: Clock | None = None,
        metrics: MetricsProvider | None = None,
    ) -> None:
        super().__init__(name, clock=clock, metrics=metrics)
        self._ready_at: dict[T, float] = {}
        # (ready time, tie-break sequence, item); entries whose time no longer matches
        # _ready_at are stale and skipped.
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()
        self._timer: Timer | None = None
        self._timer_at: float | None = None

    def add_after(self, item: T, delay_s: float) -> None:
        """Add item once delay_s seconds have passed (now if delay_s ≤ 0).

        Ignored while shutting down. Counts as a retry in the metrics (as client-go).
        """
        if self.shutting_down():
            return
        self._metrics.retry()
        if delay_s <= 0:
            self.add(item)
            return
        ready_at = self.clock.now() + delay_s
        current = self._ready_at.get(item)
        if current is not None and current <= ready_at:
            return
        self._ready_at[item] = ready_at
        heapq.heappush(self._heap, (ready_at, next(self._seq), item))
        self._arm()

    def waiting(self) -> int:
        """Items waiting for their time to add."""
        return len(self._ready_at)

    def _arm(self) -> None:
        """Make sure a timer is set for the earliest waiting item."""
        self._drop_stale_head()
        if not self._heap:
            self._cancel_timer()
            return
        earliest = self._heap[0][0]
        if self._timer is not None and self._timer_at is not None and self._timer_at <= earliest:
            return
        self._cancel_timer()
        self._timer_at = earliest
        self._timer = self.clock.call_later(earliest - self.clock.now(), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        due = self.clock.now() + TIMER_SLACK_S
        while self._heap and self._heap[0][0] <= due:
            ready_at, _, item = heapq.heappop(self._heap)
            if self._ready_at.get(item) == ready_at:
                del self._ready_at[item]
                self.add(item)
        self._arm()

    def _drop_stale_head(self) -> None:
        while self._heap and self._ready_at.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = None

    def _begin_shutdown(self) -> None:
        super()._begin_shutdown()
        self._cancel_timer()
        self._heap.clear()
        self._ready_at.clear()
