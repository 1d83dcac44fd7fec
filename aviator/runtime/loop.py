"""The controller harness: informer events → keys → rate-limited queue → workers → reconcile.

A `Controller` owns a `RateLimitingQueue[str]` of object keys and runs `workers` tasks
that each take a key and await `reconcile(key)`:

- returns normally → `forget(key)` (its backoff resets); if the `Result` has
  `requeue_after`, the key is also added back after that many seconds;
- raises → logged, `add_rate_limited(key)` (per-key exponential backoff, overall bucket);
- the queue guarantees no key is reconciled by two workers at once, and a key added
  while it is being reconciled is reconciled again afterwards.

Event handlers (`handler_for`) enqueue even while `run` is not running, so a replica
that is not the leader keeps collecting work. `run` is meant to be the leader's task:
cancelling it stops every reconcile at once (the lease was lost). Keys that were being
reconciled at that moment are put back in the queue, unfinished, so a later `run` (the
next leadership term) reconciles them again instead of finding them stuck in processing.
Setting the `stop` event instead is graceful: reconciles in flight finish first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aviator.informers.keys import JSON, DeletedFinalStateUnknown, unwrap_tombstone
from aviator.workqueue import RateLimitingQueue, ShutDown

log = logging.getLogger(__name__)

KeyFunc = Callable[[JSON], Iterable[str]]


@dataclass(frozen=True)
class Result:
    """What a reconcile asks for besides success: `requeue_after` seconds → look again."""

    requeue_after: float | None = None


Reconcile = Callable[[str], Awaitable[Result | None]]


class EnqueueKeys:
    """A ResourceEventHandler that enqueues the keys an object maps to.

    Updates enqueue the keys of both the old and the new object (a label change can move
    an object from one owner to another); deletes unwrap tombstones. A key function that
    raises is logged and the event skipped, so one bad object cannot stop the informer.
    """

    def __init__(self, controller: Controller, key_func: KeyFunc) -> None:
        self._controller = controller
        self._key_func = key_func

    def on_add(self, obj: JSON, is_initial_list: bool) -> None:
        self._enqueue(obj)

    def on_update(self, old: JSON, new: JSON) -> None:
        self._enqueue(old, new)

    def on_delete(self, obj: JSON | DeletedFinalStateUnknown) -> None:
        self._enqueue(unwrap_tombstone(obj))

    def _enqueue(self, *objs: JSON) -> None:
        keys: list[str] = []
        for obj in objs:
            try:
                keys.extend(self._key_func(obj))
            except Exception:
                log.exception("%s: mapping an event to keys failed", self._controller.name)
        for key in dict.fromkeys(keys):
            self._controller.enqueue(key)


class Controller:
    """Runs `reconcile(key)` for queued keys on `workers` concurrent tasks."""

    def __init__(
        self,
        name: str,
        reconcile: Reconcile,
        *,
        workers: int = 4,
        queue: RateLimitingQueue[str] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.name = name
        self.reconcile = reconcile
        self.workers = workers
        self.queue: RateLimitingQueue[str] = queue if queue is not None else RateLimitingQueue(name)
        self._running = False
        self._stopping = False

    def enqueue(self, key: str) -> None:
        self.queue.add(key)

    def enqueue_after(self, key: str, delay_s: float) -> None:
        self.queue.add_after(key, delay_s)

    def handler_for(self, key_func: KeyFunc) -> EnqueueKeys:
        """An informer event handler enqueuing `key_func(obj)` for every event."""
        return EnqueueKeys(self, key_func)

    def running(self) -> bool:
        return self._running

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Reconcile until `stop` is set (graceful), the queue shuts down, or cancelled.

        Cancellation stops at once: reconciles in flight are cancelled and their keys
        go back to the queue for the next run. Only one run at a time.
        """
        if self._running:
            raise RuntimeError(f"controller {self.name} is already running")
        self._running = True
        self._stopping = False
        busy: set[asyncio.Task[None]] = set()
        tasks = [
            asyncio.create_task(self._worker(busy), name=f"{self.name}-worker-{i}")
            for i in range(self.workers)
        ]
        stop_wait = asyncio.create_task((stop or asyncio.Event()).wait())
        try:
            await asyncio.wait([stop_wait, *tasks], return_when=asyncio.FIRST_COMPLETED)
            if stop_wait.done():
                self._stopping = True
                # Idle workers are waiting in get(): cancel them; busy ones finish first.
                for task in tasks:
                    if task not in busy:
                        task.cancel()
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(result, Exception):
                    log.error("%s: worker failed", self.name, exc_info=result)
        finally:
            # Also stops a worker whose reconcile swallowed its cancellation.
            self._stopping = True
            stop_wait.cancel()
            for task in tasks:
                task.cancel()
            # Wait for workers to put back unfinished keys, without swallowing our own
            # cancellation (the caller wants run() gone now).
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))
            self._running = False

    async def _worker(self, busy: set[asyncio.Task[None]]) -> None:
        me = asyncio.current_task()
        assert me is not None
        while not self._stopping:
            try:
                key = await self.queue.get()
            except ShutDown:
                return
            busy.add(me)
            try:
                await self._process(key)
            finally:
                busy.discard(me)

    async def _process(self, key: str) -> None:
        try:
            result = await self.reconcile(key)
        except asyncio.CancelledError:
            # Unfinished: mark it pending again so done() queues it for the next run.
            self.queue.add(key)
            self.queue.done(key)
            raise
        except Exception:
            log.exception(
                "%s: reconcile %s failed (retry %d)",
                self.name,
                key,
                self.queue.num_requeues(key) + 1,
            )
            self.queue.add_rate_limited(key)
            self.queue.done(key)
            return
        self.queue.forget(key)
        if result is not None and result.requeue_after is not None:
            self.queue.add_after(key, result.requeue_after)
        self.queue.done(key)
