"""Queue: async get, concurrent workers, shutdown and drain."""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.workqueue import Queue, ShutDown


async def test_fifo_and_collapsing_adds() -> None:
    q: Queue[str] = Queue()
    for key in ["a", "b", "a", "c", "b"]:
        q.add(key)
    assert len(q) == 3
    assert [await q.get() for _ in range(3)] == ["a", "b", "c"]


async def test_add_while_processing_is_requeued_on_done() -> None:
    q: Queue[str] = Queue()
    q.add("a")
    item = await q.get()
    q.add("a")
    assert len(q) == 0, "not handed out again while processing"
    q.add("b")
    q.done(item)
    assert [await q.get(), await q.get()] == ["b", "a"]


async def test_get_waits_for_an_add() -> None:
    q: Queue[str] = Queue()
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    assert not getter.done()
    q.add("x")
    assert await asyncio.wait_for(getter, 1) == "x"


async def test_a_cancelled_getter_passes_its_wakeup_on() -> None:
    q: Queue[str] = Queue()
    first = asyncio.create_task(q.get())
    second = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.add("x")  # wakes `first`
    first.cancel()
    assert await asyncio.wait_for(second, 1) == "x"
    assert len(q) == 0


async def test_shutdown_hands_out_what_is_queued_then_raises() -> None:
    q: Queue[str] = Queue()
    q.add("a")
    q.add("b")
    q.shutdown()
    q.add("c")  # refused
    assert [await q.get(), await q.get()] == ["a", "b"]
    with pytest.raises(ShutDown):
        await q.get()


async def test_shutdown_wakes_waiting_getters() -> None:
    q: Queue[str] = Queue()
    getters = [asyncio.create_task(q.get()) for _ in range(3)]
    await asyncio.sleep(0)
    q.shutdown()
    results = await asyncio.wait_for(asyncio.gather(*getters, return_exceptions=True), 1)
    assert all(isinstance(r, ShutDown) for r in results)


async def test_shutdown_with_drain_waits_for_processing_items() -> None:
    q: Queue[str] = Queue()
    q.add("a")
    q.add("b")
    a = await q.get()
    b = await q.get()
    drain = asyncio.create_task(q.shutdown_with_drain())
    await asyncio.sleep(0)
    assert not drain.done()
    q.done(a)
    await asyncio.sleep(0)
    assert not drain.done()
    q.done(b)
    await asyncio.wait_for(drain, 1)


async def test_shutdown_releases_a_waiting_drain() -> None:
    q: Queue[str] = Queue()
    q.add("a")
    await q.get()
    drain = asyncio.create_task(q.shutdown_with_drain())
    await asyncio.sleep(0)
    q.shutdown()
    await asyncio.wait_for(drain, 1)


async def test_drain_with_nothing_processing_returns_at_once() -> None:
    q: Queue[str] = Queue()
    await asyncio.wait_for(q.shutdown_with_drain(), 1)
    assert q.shutting_down()


# -- concurrent workers against a random schedule ------------------------------------

schedule = st.lists(
    st.tuples(st.sampled_from("abcdef"), st.integers(min_value=0, max_value=3)),
    min_size=1,
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(
    adds=schedule,
    work_ticks=st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=10),
    workers=st.integers(min_value=1, max_value=4),
)
def test_concurrent_workers_never_share_a_key_and_process_after_the_last_add(
    adds: list[tuple[str, int]], work_ticks: list[int], workers: int
) -> None:
    async def scenario() -> None:
        q: Queue[str] = Queue()
        clock = itertools.count()
        last_add: dict[str, int] = {}
        gets: dict[str, list[int]] = defaultdict(list)
        in_flight: set[str] = set()
        ticks = itertools.cycle(work_ticks)

        async def worker() -> None:
            while True:
                try:
                    key = await q.get()
                except ShutDown:
                    return
                assert key not in in_flight, f"{key} handed to two workers at once"
                in_flight.add(key)
                gets[key].append(next(clock))
                for _ in range(next(ticks)):
                    await asyncio.sleep(0)
                in_flight.discard(key)
                q.done(key)

        tasks = [asyncio.create_task(worker()) for _ in range(workers)]
        for key, pause in adds:
            q.add(key)
            last_add[key] = next(clock)
            for _ in range(pause):
                await asyncio.sleep(0)
        q.shutdown()  # the workers drain what is left, then stop
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        for key, added_at in last_add.items():
            after = [g for g in gets[key] if g > added_at]
            assert len(after) == 1, (key, added_at, gets[key])

    asyncio.run(scenario())
