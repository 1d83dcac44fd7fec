"""Stateful model test of DelayingQueue on a fake clock: timers, earliest-wins, collapse."""

from __future__ import annotations

import itertools

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from aviator.workqueue import DelayingQueue, FakeClock

KEYS = st.sampled_from(["a", "b", "c", "d"])
DELAYS = st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, 5.0])
STEPS = st.sampled_from([0.0, 0.25, 0.5, 1.0, 3.0])


class DelayingQueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(start=0.0)
        self.queue: DelayingQueue[str] = DelayingQueue(clock=self.clock)
        self.seq = itertools.count()
        self.waiting: dict[str, tuple[float, int]] = {}  # key → (ready time, order)
        self.order: list[str] = []  # queued, front first
        self.dirty: set[str] = set()
        self.held: str | None = None  # one worker is enough here
        self.shut = False

    def model_add(self, key: str) -> None:
        if self.shut or key in self.dirty:
            return
        self.dirty.add(key)
        if key != self.held:
            self.order.append(key)

    @rule(key=KEYS)
    def add(self, key: str) -> None:
        self.queue.add(key)
        self.model_add(key)

    @rule(key=KEYS, delay=DELAYS)
    def add_after(self, key: str, delay: float) -> None:
        self.queue.add_after(key, delay)
        if self.shut:
            return
        if delay <= 0:
            self.model_add(key)
            return
        ready = self.clock.now() + delay
        if key not in self.waiting or ready < self.waiting[key][0]:
            self.waiting[key] = (ready, next(self.seq))

    @rule(step=STEPS)
    def advance(self, step: float) -> None:
        self.clock.advance(step)
        due = sorted((v, k) for k, v in self.waiting.items() if v[0] <= self.clock.now())
        for _, key in due:
            del self.waiting[key]
            self.model_add(key)

    @rule()
    def get(self) -> None:
        if self.held is not None or not self.order:
            return
        item = self.queue.get_nowait()
        assert item == self.order.pop(0)
        self.held = item
        self.dirty.discard(item)

    @rule()
    def done(self) -> None:
        if self.held is None:
            return
        self.queue.done(self.held)
        if self.held in self.dirty:
            self.order.append(self.held)
        self.held = None

    @rule()
    def shutdown(self) -> None:
        self.queue.shutdown()
        self.shut = True
        self.waiting.clear()

    @invariant()
    def matches_the_model(self) -> None:
        assert len(self.queue) == len(self.order)
        assert self.queue.pending() == self.dirty
        assert self.queue.waiting() == len(self.waiting)
        # At most one timer is armed, and only while something waits.
        assert self.clock.pending_timers() == (1 if self.waiting else 0)


DelayingQueueMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=25, deadline=None
)
TestDelayingQueueMachine = DelayingQueueMachine.TestCase
