"""Inbox: frames taken in order; the oldest dropped past its bounds, never the newest."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aviator.latency.inbox import Inbox


async def test_frames_are_taken_in_order_and_the_oldest_go_past_the_bound() -> None:
    inbox = Inbox(max_waiting=2)
    assert inbox.put("a") == 0
    assert inbox.put("b") == 0
    assert inbox.put("c") == 1  # "a" goes
    assert [await inbox.get(), await inbox.get()] == ["b", "c"]
    assert len(inbox) == 0


async def test_a_byte_bound_counts_what_waits_besides_the_newest() -> None:
    inbox = Inbox(max_waiting=10, max_bytes=5)
    assert inbox.put("aaa") == 0
    assert inbox.put("bb") == 0
    assert inbox.full()  # 5 bytes: one more frame could push one out
    assert inbox.put("cccccccc") == 0  # 5 bytes besides it
    assert inbox.put("dd") == 3  # 13 bytes besides it: all three older ones go
    assert inbox.put("e") == 0
    assert [await inbox.get(), await inbox.get()] == ["dd", "e"]
    assert not inbox.full()


async def test_get_waits_for_a_frame_and_a_closed_inbox_drains_then_ends() -> None:
    inbox = Inbox()
    waiting = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    inbox.put(b"x")
    assert await asyncio.wait_for(waiting, 5) == b"x"
    inbox.put("y")
    inbox.close()
    assert await inbox.get() == "y"
    assert await inbox.get() is None
    ending = asyncio.ensure_future(Inbox().get())
    await asyncio.sleep(0)
    assert not ending.done()


def test_bounds_must_hold_a_frame() -> None:
    with pytest.raises(ValueError):
        Inbox(max_waiting=0)


@given(
    st.lists(st.one_of(st.text(max_size=6), st.none()), max_size=60),
    st.integers(1, 5),
    st.integers(0, 12),
)
def test_what_is_taken_is_the_newest_suffix_of_each_stretch_in_order(
    ops: list[str | None], max_waiting: int, max_bytes: int
) -> None:
    """A string is a frame put, None a get. Every frame is taken once or dropped once,
    in the order put; what waits stays within both bounds unless it is the newest alone;
    a drop only ever takes the oldest."""
    inbox = Inbox(max_waiting=max_waiting, max_bytes=max_bytes)
    put: list[str] = []
    taken: list[str] = []
    dropped = 0

    async def run() -> None:
        nonlocal dropped
        for op in ops:
            if op is not None:
                frame = f"{len(put)}:{op}"  # distinct frames
                put.append(frame)
                dropped += inbox.put(frame)
                waiting = list(inbox._frames)
                assert waiting[-1] == frame
                assert len(waiting) == 1 or (
                    len(waiting) <= max_waiting and sum(map(len, waiting)) - len(frame) <= max_bytes
                )
            elif len(inbox):
                got = await inbox.get()
                assert isinstance(got, str)
                taken.append(got)
        inbox.close()
        while (got := await inbox.get()) is not None:
            assert isinstance(got, str)
            taken.append(got)

    asyncio.run(run())
    assert len(taken) + dropped == len(put)
    order = [put.index(f) for f in taken]
    assert order == sorted(order)
    if put:
        assert taken[-1] == put[-1]  # the newest is never dropped


async def test_room_waits_for_a_frame_taken_from_a_full_inbox_or_gives_up() -> None:
    inbox = Inbox(max_waiting=2)
    inbox.put("a")
    assert await inbox.room(0.0)  # not full: at once
    inbox.put("b")
    assert inbox.full()
    assert not await inbox.room(0.01)  # nothing taken: gives up
    waiting = asyncio.ensure_future(inbox.room(10))
    await asyncio.sleep(0)
    assert not waiting.done()
    assert await inbox.get() == "a"
    assert await asyncio.wait_for(waiting, 5)
    assert inbox.taken == 1


@given(st.lists(st.text(max_size=6), max_size=40), st.integers(1, 5), st.integers(0, 12))
def test_a_reader_that_waits_for_room_never_has_a_frame_dropped(
    frames: list[str], max_waiting: int, max_bytes: int
) -> None:
    """Put a frame only when the inbox is not full, taking one when it is: nothing is
    ever dropped (what backpressure relies on)."""
    inbox = Inbox(max_waiting=max_waiting, max_bytes=max_bytes)

    async def run() -> list[str]:
        taken = []
        for frame in frames:
            while inbox.full():
                got = await inbox.get()
                assert isinstance(got, str)
                taken.append(got)
            assert inbox.put(frame) == 0
        inbox.close()
        while (got := await inbox.get()) is not None:
            assert isinstance(got, str)
            taken.append(got)
        return taken

    assert asyncio.run(run()) == frames
