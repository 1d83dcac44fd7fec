"""Controller harness: retries, requeue-after, forget, cancellation, one worker per key."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import pytest

from aviator.informers import DeletedFinalStateUnknown, ResourceEventHandler
from aviator.runtime.loop import REQUEUE_GRID_S, URGENT_MIN_GAP_S, Controller, Result
from aviator.workqueue import FakeClock, RateLimitingQueue


def fake_queue() -> tuple[FakeClock, RateLimitingQueue[str]]:
    clock = FakeClock()
    return clock, RateLimitingQueue(clock=clock)


async def until(predicate: Callable[[], bool], rounds: int = 200) -> None:
    """Let other tasks run until predicate holds (no wall-clock waiting)."""
    for _ in range(rounds):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def stop_and_wait(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_error_backs_off_exponentially_and_success_forgets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, queue = fake_queue()
    calls: list[str] = []
    failures = 2

    async def reconcile(key: str) -> None:
        calls.append(key)
        if len(calls) <= failures:
            raise RuntimeError("boom")

    controller = Controller("t", reconcile, workers=2, queue=queue)
    controller.enqueue("ns/a")
    run = asyncio.create_task(controller.run())
    await until(lambda: len(calls) == 1)
    await until(lambda: queue.waiting() == 1)
    assert queue.num_requeues("ns/a") == 1
    clock.advance(0.0049)
    await until(lambda: True)
    assert len(calls) == 1, "retried before its 5 ms backoff"
    clock.advance(0.0001)
    await until(lambda: len(calls) == 2)
    assert queue.num_requeues("ns/a") == 2
    clock.advance(0.0099)
    await until(lambda: True)
    assert len(calls) == 2, "second retry waits 10 ms"
    clock.advance(0.0001)
    await until(lambda: len(calls) == 3)
    await until(lambda: queue.num_requeues("ns/a") == 0)  # success forgets
    assert queue.waiting() == 0 and len(queue) == 0
    assert "reconcile ns/a failed" in caplog.text
    await stop_and_wait(run)


async def test_requeue_after_adds_the_key_back_later() -> None:
    clock, queue = fake_queue()
    calls: list[str] = []

    async def reconcile(key: str) -> Result:
        calls.append(key)
        return Result(requeue_after=30.0)

    controller = Controller("t", reconcile, queue=queue)
    controller.enqueue("k")
    run = asyncio.create_task(controller.run())
    await until(lambda: queue.waiting() == 1)
    assert calls == ["k"]
    assert queue.num_requeues("k") == 0
    clock.advance(29.9)
    await until(lambda: True)
    assert calls == ["k"]
    clock.advance(0.1)
    await until(lambda: len(calls) == 2)
    await stop_and_wait(run)


async def test_requeues_from_scattered_moments_come_due_together_never_sooner() -> None:
    """Two keys reconciled 5 ms apart, each asking for 1 s: both come back on the
    same step of the requeue grid, after the later one's second is up, in one turn of
    the queue's timer (the loop wakes once for them, not once per key)."""
    assert REQUEUE_GRID_S == 0.01  # the steps this test counts in
    clock, queue = fake_queue()
    calls: list[tuple[str, float]] = []

    async def reconcile(key: str) -> Result:
        calls.append((key, clock.now()))
        return Result(requeue_after=1.0)

    controller = Controller("t", reconcile, queue=queue)
    run = asyncio.create_task(controller.run())
    start = clock.now()  # on the grid
    clock.advance(0.002)
    controller.enqueue("a")
    await until(lambda: queue.waiting() == 1)
    clock.advance(0.005)
    controller.enqueue("b")
    await until(lambda: queue.waiting() == 2)
    clock.advance(1.0)  # a's second is up (at 1.002), b's too (1.007): not their step
    for _ in range(50):  # every task runs what it can
        await asyncio.sleep(0)
    assert len(calls) == 2, "a requeue came back before its step of the grid"
    clock.advance(0.003)  # 1.01
    await until(lambda: len(calls) == 4)
    assert [k for k, _ in calls[2:]] == ["a", "b"]
    assert [at - start for _, at in calls[2:]] == pytest.approx([1.01, 1.01])
    await stop_and_wait(run)


async def test_enqueue_after_and_events_before_run_are_kept() -> None:
    clock, queue = fake_queue()
    seen: list[str] = []

    async def reconcile(key: str) -> None:
        seen.append(key)

    controller = Controller("t", reconcile, queue=queue)
    controller.enqueue("now")
    controller.enqueue_after("later", 5)
    run = asyncio.create_task(controller.run())
    await until(lambda: seen == ["now"])
    clock.advance(5)
    await until(lambda: seen == ["now", "later"])
    await stop_and_wait(run)


async def test_cancellation_stops_at_once_and_a_later_run_reconciles_the_key() -> None:
    _, queue = fake_queue()
    started = asyncio.Event()
    cancelled: list[str] = []

    async def hang(key: str) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(key)
            raise

    controller = Controller("t", hang, workers=3, queue=queue)
    controller.enqueue("k")
    run = asyncio.create_task(controller.run())
    await asyncio.wait_for(started.wait(), 2)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert cancelled == ["k"], "the reconcile in flight was cancelled"
    assert not controller.running()
    assert queue.processing() == frozenset(), "nothing left stuck in processing"
    assert len(queue) == 1

    done: list[str] = []

    async def finish(key: str) -> None:
        done.append(key)

    controller.reconcile = finish
    run = asyncio.create_task(controller.run())
    await until(lambda: done == ["k"])
    await stop_and_wait(run)


async def test_a_reconcile_that_swallows_cancellation_does_not_keep_run_alive() -> None:
    _, queue = fake_queue()
    started = asyncio.Event()

    async def stubborn(key: str) -> None:
        started.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()

    controller = Controller("t", stubborn, workers=2, queue=queue)
    controller.enqueue("k")
    run = asyncio.create_task(controller.run())
    await asyncio.wait_for(started.wait(), 2)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 2)
    assert queue.processing() == frozenset()


async def test_stop_event_lets_reconciles_in_flight_finish() -> None:
    _, queue = fake_queue()
    started = asyncio.Event()
    release = asyncio.Event()
    finished: list[str] = []

    async def slow(key: str) -> None:
        started.set()
        await release.wait()
        finished.append(key)

    controller = Controller("t", slow, workers=2, queue=queue)
    controller.enqueue("k")
    stop = asyncio.Event()
    run = asyncio.create_task(controller.run(stop))
    await asyncio.wait_for(started.wait(), 2)
    stop.set()
    await until(lambda: True)
    assert not run.done(), "waits for the reconcile in flight"
    release.set()
    await asyncio.wait_for(run, 2)
    assert finished == ["k"]
    assert queue.processing() == frozenset()


async def test_queue_shutdown_ends_run() -> None:
    _, queue = fake_queue()

    async def nothing(key: str) -> None:
        pass

    controller = Controller("t", nothing, queue=queue)
    run = asyncio.create_task(controller.run())
    await asyncio.sleep(0)
    queue.shutdown()
    await asyncio.wait_for(run, 2)


async def test_only_one_run_at_a_time() -> None:
    async def nothing(key: str) -> None:
        pass

    controller = Controller("t", nothing, queue=fake_queue()[1])
    run = asyncio.create_task(controller.run())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        await controller.run()
    await stop_and_wait(run)


def test_workers_must_be_positive() -> None:
    async def nothing(key: str) -> None:
        pass

    with pytest.raises(ValueError):
        Controller("t", nothing, workers=0)


async def test_two_workers_never_reconcile_one_key_concurrently() -> None:
    _, queue = fake_queue()
    in_flight: set[str] = set()
    overlaps: list[str] = []
    last_add: dict[str, int] = {}
    runs: dict[str, list[int]] = {}
    tick = 0

    async def reconcile(key: str) -> None:
        nonlocal tick
        if key in in_flight:
            overlaps.append(key)
        in_flight.add(key)
        tick += 1
        runs.setdefault(key, []).append(tick)
        for _ in range(len(key) + tick % 3):
            await asyncio.sleep(0)
        in_flight.discard(key)

    controller = Controller("t", reconcile, workers=4, queue=queue)
    run = asyncio.create_task(controller.run())
    keys = ["a", "bb", "ccc", "a", "a", "bb", "dddd", "a", "ccc"]
    for round_ in range(30):
        key = keys[round_ % len(keys)]
        controller.enqueue(key)
        tick += 1
        last_add[key] = tick
        for _ in range(round_ % 4):
            await asyncio.sleep(0)
    await until(lambda: len(queue) == 0 and not queue.processing(), rounds=2000)
    await stop_and_wait(run)
    assert overlaps == []
    for key, added in last_add.items():
        assert any(t > added for t in runs[key]), f"{key} not reconciled after its last add"


def test_handler_maps_events_to_keys_and_unwraps_tombstones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def nothing(key: str) -> None:
        pass

    controller = Controller("t", nothing, queue=fake_queue()[1])

    def owners(obj: dict[str, object]) -> list[str]:
        owner = obj.get("owner")
        if owner == "bad":
            raise KeyError("owner")
        return [str(owner)] if owner else []

    handler = controller.handler_for(owners)
    assert isinstance(handler, ResourceEventHandler)
    handler.on_add({"owner": "ns/p1"}, True)
    handler.on_update({"owner": "ns/p1"}, {"owner": "ns/p2"})
    handler.on_delete(DeletedFinalStateUnknown("ns/x", {"owner": "ns/p3"}))
    handler.on_delete({"owner": None})
    with caplog.at_level(logging.ERROR):
        handler.on_add({"owner": "bad"}, False)
    assert "mapping an event to keys failed" in caplog.text
    order = []
    while (key := controller.queue.get_nowait()) is not None:
        order.append(key)
    assert order == ["ns/p1", "ns/p2", "ns/p3"]


async def test_urgent_keys_go_at_once_but_at_most_once_per_gap() -> None:
    clock, queue = fake_queue()
    seen: list[str] = []

    async def reconcile(key: str) -> None:
        seen.append(key)

    controller = Controller("t", reconcile, queue=queue, clock=clock.now)
    run = asyncio.create_task(controller.run())
    controller.enqueue_urgent("k")
    await until(lambda: seen == ["k"])
    # A flood of urgent reports within the gap: one more reconcile, after the gap.
    for _ in range(50):
        controller.enqueue_urgent("k")
    await until(lambda: queue.waiting() == 1)
    assert seen == ["k"]
    clock.advance(URGENT_MIN_GAP_S)
    await until(lambda: seen == ["k", "k"])
    await until(lambda: True)
    assert seen == ["k", "k"] and queue.waiting() == 0
    # Another key is not held back by the first one's gap.
    controller.enqueue_urgent("other")
    await until(lambda: seen[-1] == "other")
    await stop_and_wait(run)


def test_admits_filters_every_way_of_enqueueing() -> None:
    async def reconcile(_: str) -> None:
        return None

    c = Controller("test", reconcile, admits=lambda key: key.startswith("mine/"))
    for key in ("mine/a", "theirs/b"):
        c.enqueue(key)
        c.enqueue_urgent(key)
        c.enqueue_after(key, 0.0)
    assert len(c.queue) == 1
    assert Controller("test", reconcile).admits("theirs/b")
