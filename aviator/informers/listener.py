"""One handler's private notification buffer and the task that drains it.

Each handler of a shared informer gets its own unbounded buffer and task (client-go's
processorListener), so a slow handler delays only itself, and it still sees every
notification in the order the informer produced them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from dataclasses import dataclass

from aviator.informers.handlers import MaybeAwaitable, ResourceEventHandler
from aviator.informers.keys import JSON, DeletedFinalStateUnknown

log = logging.getLogger(__name__)

YIELD_EVERY = 256  # notifications delivered to sync handlers between loop yields


# Not frozen: a frozen dataclass's __init__ costs twice as much, once per event and
# handler; nothing changes a notification after it is made.
@dataclass(slots=True)
class AddNotification:
    obj: JSON
    is_initial_list: bool


@dataclass(slots=True)
class UpdateNotification:
    old: JSON
    new: JSON


@dataclass(slots=True)
class DeleteNotification:
    obj: JSON | DeletedFinalStateUnknown


Notification = AddNotification | UpdateNotification | DeleteNotification


class ProcessorListener:
    """Buffers notifications for one handler and delivers them one at a time, in order.

    A handler that raises is logged and keeps receiving later notifications.
    """

    def __init__(self, handler: ResourceEventHandler, name: str = "") -> None:
        self.handler = handler
        self.name = name or type(handler).__name__
        self._buffer: deque[Notification] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._initial_pending = 0  # initial-list adds not yet delivered
        self._initial_done = asyncio.Event()
        self._initial_done.set()
        self.delivered = 0

    def add(self, notification: Notification) -> None:
        if isinstance(notification, AddNotification) and notification.is_initial_list:
            self._initial_pending += 1
            self._initial_done.clear()
        self._buffer.append(notification)
        self._wakeup.set()

    def pending(self) -> int:
        return len(self._buffer)

    def initial_list_delivered(self) -> bool:
        """True once every initial-list add queued so far has been handled."""
        return self._initial_pending == 0

    async def wait_initial_list_delivered(self) -> None:
        await self._initial_done.wait()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"informer-handler-{self.name}"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        since_yield = 0
        while True:
            while not self._buffer:
                self._wakeup.clear()
                since_yield = 0
                await self._wakeup.wait()
            notification = self._buffer.popleft()
            try:
                result = self._dispatch(notification)
                if result is not None and inspect.isawaitable(result):
                    await result
                    since_yield = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("informer handler %s failed on %s", self.name, _kind(notification))
            finally:
                self.delivered += 1
                if type(notification) is AddNotification and notification.is_initial_list:
                    self._initial_pending -= 1
                    if self._initial_pending == 0:
                        self._initial_done.set()
            since_yield += 1
            if since_yield >= YIELD_EVERY:
                # Sync handlers never suspend: let other tasks run during long backlogs.
                since_yield = 0
                await asyncio.sleep(0)

    def _dispatch(self, n: Notification) -> MaybeAwaitable:
        # Called directly (no coroutine per event) so sync handlers cost one call.
        if type(n) is UpdateNotification:
            return self.handler.on_update(n.old, n.new)
        if type(n) is AddNotification:
            return self.handler.on_add(n.obj, n.is_initial_list)
        assert type(n) is DeleteNotification
        return self.handler.on_delete(n.obj)


def _kind(n: Notification) -> str:
    return type(n).__name__.removesuffix("Notification").lower()
