"""The generic controller loop: informer events → keys → rate-limited queue → workers → reconcile.

A `Controller` owns a `RateLimitingQueue[str]` of object keys and runs `workers` tasks
that each take a key and await `reconcile(key)`. This loop is the one place that owns
retries, requeues and reconcile metrics (as controller-runtime's does); a reconciler
only returns a `Result` or raises:

- returns normally → `forget(key)` (its backoff resets); if the `Result` has
  `requeue_after`, the key is also added back after that many seconds;
- raises `CacheBehind` (a write met a newer object than the cache shows) → added back
  after `CACHE_BEHIND_RETRY_S`, not counted as an error;
- raises anything else → logged, `add_rate_limited(key)` (per-key exponential
  backoff, overall bucket);
- requeues land on a grid of `REQUEUE_GRID_S` on the queue's clock (later, never
  sooner, by less than one step): keys requeued at scattered moments come due
  together, so the loop wakes about 1 / `REQUEUE_GRID_S` times a second for them
  instead of once per key (below);
- every reconcile is timed in `aviator_reconcile_duration_seconds{result}` (ok,
  requeue, error) and failures counted in `aviator_reconcile_errors_total`, when the
  controller was given a `ReconcileMetrics`;
- the queue guarantees no key is reconciled by two workers at once, and a key added
  while it is being reconciled is reconciled again afterwards.

`admits` (optional) filters keys at enqueue: a key it refuses is not queued (with
sharding, keys of policies other replicas own; the reconcile checks again before acting,
since ownership may change while a key waits). Requeues after a reconcile are not
filtered here: the reconcile's own check drops them.

`enqueue_urgent` is for keys that must not wait for their requeue (a pod stopped
answering): added at once, but at most once per `URGENT_MIN_GAP_S` per key and within
an overall token bucket (`URGENT_QPS`, `URGENT_BURST`), so a flood of reports cannot
keep a key reconciling in a loop; a key held back is added when its turn comes (the
queue keeps one entry per key, however often it is asked).

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
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from aviator.informers.keys import JSON, DeletedFinalStateUnknown, unwrap_tombstone
from aviator.runtime.writer import CacheBehind
from aviator.workqueue import BucketRateLimiter, RateLimitingQueue, ShutDown

log = logging.getLogger(__name__)

KeyFunc = Callable[[JSON], Iterable[str]]

# A requeue's step. Policies evaluated every interval, from moments as scattered as
# their creation, would each wake the loop on their own: a wake-up of a process that
# slept costs far more than a settled policy's reconcile (500 keys a second, one
# wake-up each: about 50 µs of CPU per reconcile for the loop alone; taken ten at a
# time: about 10 µs). A requeue comes at most 10 ms late: 1 % of a 1 s
# evaluationInterval, 5 % of the shortest one the API allows (200 ms).
REQUEUE_GRID_S = 0.01

# Our own write is not in the informer cache yet: look again soon, not with backoff.
CACHE_BEHIND_RETRY_S = 0.2
URGENT_MIN_GAP_S = 0.2
URGENT_QPS = 20.0
URGENT_BURST = 50


@dataclass(frozen=True)
class Result:
    """What a reconcile asks for besides success: `requeue_after` seconds → look again."""

    requeue_after: float | None = None


Reconcile = Callable[[str], Awaitable[Result | None]]


class ReconcileMetrics:
    """Reconcile duration by result and the failure count, on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "aviator_reconcile_duration_seconds",
            "Seconds one reconcile takes.",
            ["result"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.errors = Counter(
            "aviator_reconcile_errors_total", "Reconciles that failed.", registry=registry
        )
        # Each result's series, looked up once: every reconcile observes one.
        self._by_result = {r: self.duration.labels(result=r) for r in ("ok", "requeue", "error")}

    def observe(self, result: str, seconds: float) -> None:
        """One reconcile's duration, by its result (ok, requeue, error)."""
        self._by_result[result].observe(seconds)


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
        metrics: ReconcileMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        admits: Callable[[str], bool] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.name = name
        self.reconcile = reconcile
        self.workers = workers
        self.queue: RateLimitingQueue[str] = queue if queue is not None else RateLimitingQueue(name)
        self.metrics = metrics
        self._running = False
        self._stopping = False
        self._urgent_at: dict[str, float] = {}  # key -> when it may be urgent again
        self._clock = clock
        self._urgent_bucket = BucketRateLimiter(qps=URGENT_QPS, burst=URGENT_BURST, clock=clock)
        self._admits = admits

    def admits(self, key: str) -> bool:
        return self._admits is None or self._admits(key)

    def enqueue(self, key: str) -> None:
        if self.admits(key):
            self.queue.add(key)

    def enqueue_urgent(self, key: str) -> None:
        """Reconcile `key` as soon as the urgent limits allow (module docstring)."""
        if not self.admits(key):
            return
        now = self._clock()
        if len(self._urgent_at) > 4096:  # forget keys whose gap is over
            self._urgent_at = {k: t for k, t in self._urgent_at.items() if t > now}
        ready = self._urgent_at.get(key, now)
        if ready > now:
            self.queue.add_after(key, ready - now)
            return
        delay = self._urgent_bucket.when(key)
        self._urgent_at[key] = now + max(URGENT_MIN_GAP_S, delay)
        if delay > 0:
            self.queue.add_after(key, delay)
        else:
            self.queue.add(key)

    def enqueue_after(self, key: str, delay_s: float) -> None:
        if self.admits(key):
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
        start = time.perf_counter()
        try:
            result = await self.reconcile(key)
        except asyncio.CancelledError:
            # Unfinished: mark it pending again so done() queues it for the next run.
            self.queue.add(key)
            self.queue.done(key)
            raise
        except CacheBehind as exc:
            log.debug("%s: %s: %s; cache behind, looking again", self.name, key, exc)
            self._observe("requeue", start)
            self.queue.forget(key)
            self.queue.add_after(key, CACHE_BEHIND_RETRY_S)
            self.queue.done(key)
            return
        except Exception:
            self._observe("error", start)
            if self.metrics is not None:
                self.metrics.errors.inc()
            log.exception(
                "%s: reconcile %s failed (retry %d)",
                self.name,
                key,
                self.queue.num_requeues(key) + 1,
            )
            self.queue.add_rate_limited(key)
            self.queue.done(key)
            return
        self._observe("ok", start)
        self.queue.forget(key)
        if result is not None and result.requeue_after is not None:
            self.queue.add_after(key, self._on_grid(result.requeue_after))
        self.queue.done(key)

    def _on_grid(self, delay_s: float) -> float:
        """`delay_s`, lengthened to end on the next step of the requeue grid."""
        now = self.queue.clock.now()
        # The tolerance keeps a time already on the grid where it is (float division).
        steps = math.ceil((now + delay_s) / REQUEUE_GRID_S - 1e-6)
        return max(delay_s, steps * REQUEUE_GRID_S - now)

    def _observe(self, result: str, start: float) -> None:
        if self.metrics is not None:
            self.metrics.observe(result, time.perf_counter() - start)
