"""The tests' waiting helpers: event-driven, bounded, and explicit about what never came."""

from __future__ import annotations

import asyncio

import pytest

from aviator.testing.waiting import NotReached, bounded, eventually


async def test_eventually_rechecks_when_the_event_is_set() -> None:
    changed = asyncio.Event()
    state = {"n": 0}

    async def bump() -> None:
        for _ in range(3):
            await asyncio.sleep(0)
            state["n"] += 1
            changed.set()

    task = asyncio.create_task(bump())
    await eventually(lambda: state["n"] == 3, within=5, what="n == 3", changed=changed)
    await task


async def test_eventually_fails_with_what_and_state() -> None:
    with pytest.raises(NotReached, match=r"not within 0\.05 s: the sky to fall\nstill up"):
        await eventually(
            lambda: False,
            within=0.05,
            what="the sky to fall",
            changed=asyncio.Event(),
            state=lambda: "still up",
        )


async def test_eventually_rechecks_an_async_predicate_on_its_interval() -> None:
    calls = 0

    async def third_time() -> bool:
        nonlocal calls
        calls += 1
        return calls == 3

    await eventually(third_time, within=5, what="a third call", recheck_s=0.001)
    assert calls == 3


async def test_a_predicates_own_timeout_is_not_reported_as_ours() -> None:
    def broken() -> bool:
        raise TimeoutError("the predicate's own")

    with pytest.raises(TimeoutError, match="the predicate's own"):
        await eventually(broken, within=5, what="x", recheck_s=1)


async def test_eventually_needs_something_to_wait_on() -> None:
    with pytest.raises(ValueError):
        await eventually(lambda: True, within=1, what="x")


async def test_bounded_returns_the_result_or_fails_with_a_message() -> None:
    async def answer() -> int:
        return 42

    assert await bounded(answer(), within=1, what="the answer") == 42
    with pytest.raises(NotReached, match=r"not within 0\.01 s: an event nobody sets"):
        await bounded(asyncio.Event().wait(), within=0.01, what="an event nobody sets")
