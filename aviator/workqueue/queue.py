"""The work queue: FIFO of pending items where no item is ever handed out twice at once.

Semantics (client-go's util/workqueue `Typed`):

- An item is *pending* (in the dirty set) from `add` until a worker `get`s it, and
  *processing* from `get` until that worker calls `done`.
- `add` of an item that is already pending does nothing: adds collapse.
- `add` of an item that is processing marks it pending but does not queue it; `done`
  queues it again (at the back). So no two workers ever hold the same item, and an add
  that happens during processing is never lost.
- Items are handed out in the order they became queued (FIFO).
- `shutdown()` refuses new adds; `get` keeps handing out what is already queued and
  raises `ShutDown` once nothing is left. `shutdown_with_drain()` additionally waits until
  every processing item is `done`.

`add`, `done` and `shutdown` are synchronous so informer handlers and timers can call
them; only `get` and the drain wait. A queue belongs to one event loop and is not
thread-safe (like every asyncio object).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

from aviator.workqueue.clock import Clock, RealClock
from aviator.workqueue.metrics import MetricsProvider, NoopQueueMetrics, QueueMetrics

T = TypeVar("T", bound=Hashable)


class ShutDown(Exception):
    """Raised by `get` when the queue is shut down and nothing is left to hand out."""


class Queue(Generic[T]):
    """A work queue of hashable items (see the module docstring for the semantics).

    A named queue reports metrics to `metrics` (default: the global registry's provider);
    an unnamed queue reports none.
    """

    def __init__(
        self,
        name: str = "",
        *,
        clock: Clock | None = None,
        metrics: MetricsProvider | None = None,
    ) -> None:
        self.name = name
        self.clock: Clock = clock if clock is not None else RealClock()
        self._metrics: QueueMetrics = (
            (metrics or MetricsProvider.for_registry()).queue_metrics(name, self.clock.now)
            if name
            else NoopQueueMetrics()
        )
        self._queue: deque[T] = deque()
        self._dirty: set[T] = set()
        self._processing: set[T] = set()
        self._shutting_down = False
        self._draining = False
        self._getters: deque[asyncio.Future[None]] = deque()
        self._drainers: list[asyncio.Future[None]] = []

    # -- adding and finishing -------------------------------------------------------

    def add(self, item: T) -> None:
        """Make item pending; no-op if it already is or the queue is shutting down."""
        if self._shutting_down or item in self._dirty:
            return
        self._metrics.add(item)
        self._dirty.add(item)
        if item in self._processing:
            return  # done() queues it again
        self._queue.append(item)
        self._wake_one_getter()

    def done(self, item: T) -> None:
        """Mark item's processing finished; queue it again if it was added meanwhile.

        Calling done for an item that is not processing does nothing.
        """
        if item not in self._processing:
            return
        self._metrics.done(item)
        self._processing.discard(item)
        if item in self._dirty:
            self._queue.append(item)
            self._wake_one_getter()
        if not self._processing:
            self._wake_drainers()

    # -- handing out ----------------------------------------------------------------

    def get_nowait(self) -> T | None:
        """The next item, now marked processing; None if nothing is queued.

        Raises ShutDown if the queue is shutting down and nothing is queued.
        """
        if not self._queue:
            if self._shutting_down:
                raise ShutDown(self.name)
            return None
        item = self._queue.popleft()
        self._metrics.get(item)
        self._processing.add(item)
        self._dirty.discard(item)
        return item

    async def get(self) -> T:
        """Wait for the next item and mark it processing; the caller must call done(item).

        Raises ShutDown once the queue is shutting down and nothing is left. Cancelling a
        waiting get takes nothing from the queue.
        """
        while not self._queue:
            if self._shutting_down:
                raise ShutDown(self.name)
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                if getter in self._getters:
                    self._getters.remove(getter)
                # Woken but leaving: hand the wake-up to the next waiter.
                if self._queue and getter.done() and not getter.cancelled():
                    self._wake_one_getter()
                raise
        item = self.get_nowait()
        assert item is not None  # the queue is not empty
        return item

    def _wake_one_getter(self) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return

    # -- shutting down --------------------------------------------------------------

    def shutdown(self) -> None:
        """Refuse new adds; wake every get so it drains the queue or raises ShutDown.

        Also releases a `shutdown_with_drain` that is still waiting (as client-go).
        """
        self._draining = False
        self._begin_shutdown()
        self._wake_drainers()

    async def shutdown_with_drain(self) -> None:
        """Shut down, then wait until every item being processed is done.

        Items re-added while processing are still queued after the drain returns, and
        `get` still hands them out.
        """
        self._draining = True
        self._begin_shutdown()
        while self._processing and self._draining:
            drainer = asyncio.get_running_loop().create_future()
            self._drainers.append(drainer)
            try:
                await drainer
            finally:
                if drainer in self._drainers:
                    self._drainers.remove(drainer)

    def _begin_shutdown(self) -> None:
        self._shutting_down = True
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)

    def _wake_drainers(self) -> None:
        drainers, self._drainers = self._drainers, []
        for drainer in drainers:
            if not drainer.done():
                drainer.set_result(None)

    def shutting_down(self) -> bool:
        return self._shutting_down

    # -- inspection -----------------------------------------------------------------

    def __len__(self) -> int:
        """Items queued for hand-out (not counting re-adds of items still processing)."""
        return len(self._queue)

    def processing(self) -> frozenset[T]:
        """Items handed out and not yet done."""
        return frozenset(self._processing)

    def pending(self) -> frozenset[T]:
        """Items added and not yet handed out (the dirty set)."""
        return frozenset(self._dirty)
