"""Stateful model test of Queue: the dirty/processing semantics against a plain model."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from aviator.workqueue import Queue, ShutDown

KEYS = st.sampled_from(["a", "b", "c", "d", "e"])
WORKERS = st.integers(min_value=0, max_value=2)


class QueueMachine(RuleBasedStateMachine):
    """Workers take and finish items; the model predicts order, collapse and requeue."""

    def __init__(self) -> None:
        super().__init__()
        self.queue: Queue[str] = Queue()
        self.held: dict[int, str | None] = {0: None, 1: None, 2: None}
        self.expected_order: list[str] = []  # the queued items, front first
        self.dirty: set[str] = set()
        self.shut = False
        self.owed: set[str] = set()  # added and not handed out since

    @rule(key=KEYS)
    def add(self, key: str) -> None:
        self.queue.add(key)
        if self.shut:
            return
        self.owed.add(key)
        if key in self.dirty:
            return  # collapses
        self.dirty.add(key)
        if key not in self.held.values():
            self.expected_order.append(key)

    @rule(worker=WORKERS)
    def get(self, worker: int) -> None:
        if self.held[worker] is not None:
            return
        if not self.expected_order and self.shut:
            with pytest.raises(ShutDown):
                self.queue.get_nowait()
            return
        item = self.queue.get_nowait()
        if not self.expected_order:
            assert item is None
            return
        assert item == self.expected_order.pop(0)
        assert item not in self.held.values(), "handed to two workers at once"
        self.held[worker] = item
        self.dirty.discard(item)
        self.owed.discard(item)

    @rule(worker=WORKERS)
    def done(self, worker: int) -> None:
        item = self.held[worker]
        if item is None:
            return
        self.queue.done(item)
        self.held[worker] = None
        if item in self.dirty:
            self.expected_order.append(item)

    @rule(key=KEYS)
    def done_of_an_item_not_processing_is_ignored(self, key: str) -> None:
        if key not in self.held.values():
            self.queue.done(key)

    @precondition(lambda self: not self.shut)
    @rule()
    def shutdown(self) -> None:
        self.queue.shutdown()
        self.shut = True
        assert self.queue.shutting_down()

    @invariant()
    def matches_the_model(self) -> None:
        assert len(self.queue) == len(self.expected_order)
        assert self.queue.pending() == self.dirty
        assert self.queue.processing() == {i for i in self.held.values() if i is not None}

    def teardown(self) -> None:
        # Finish the work in hand, then drain: every owed key comes out exactly once.
        for worker, item in self.held.items():
            if item is not None:
                self.queue.done(item)
                self.held[worker] = None
        self.queue.shutdown()
        handed_out: Counter[str] = Counter()
        while True:
            try:
                item = self.queue.get_nowait()
            except ShutDown:
                break
            assert item is not None
            handed_out[item] += 1
            self.queue.done(item)
        assert set(handed_out) == self.owed
        assert all(n == 1 for n in handed_out.values())
        assert not self.queue.processing()


QueueMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)
TestQueueMachine = QueueMachine.TestCase
