"""Waiting in tests: on events, within a bound, failing with a message that says what.

A test that waits for a condition re-checks it whenever something it watches changes
(an asyncio.Event the code under test sets), not on a wall-clock schedule. When the
condition depends on state nobody signals (what the API server holds now), `recheck_s`
re-checks it that often as well. Either way the wait is bounded: past `within` seconds it
fails with an AssertionError naming the condition and, from `state`, what the code under
test was doing then, instead of a bare TimeoutError minutes later.
"""

from __future__ import annotations

import asyncio
import inspect
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import aiohttp

T = TypeVar("T")

# Compiling the agent's eBPF program takes seconds on a quiet machine and over two
# minutes with both cores busy: the bound on waits that include it.
BPF_COMPILE_BOUND_S = 600


class NotReached(AssertionError):
    """A condition a test waited for did not hold within its bound."""


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]],
    *,
    within: float,
    what: str,
    changed: asyncio.Event | None = None,
    recheck_s: float | None = None,
    state: Callable[[], str] | None = None,
) -> None:
    """Return once predicate() holds; raise NotReached after `within` seconds.

    The predicate is checked at once, then again each time `changed` is set (it is
    cleared before each check, so no change is missed) and, if given, every `recheck_s`.
    It may be a coroutine function; its own time counts against `within`.
    """
    if changed is None and recheck_s is None:
        raise ValueError("eventually() needs an event to wait on or a recheck interval")
    bound = asyncio.timeout(within)
    try:
        async with bound:
            while True:
                if changed is not None:
                    changed.clear()
                result = predicate()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                await _next_check(changed, recheck_s)
    except TimeoutError:
        if not bound.expired():
            raise  # the predicate's own time-out, not ours
        raise _not_reached(within, what, state) from None


async def with_loop_turns(work: Awaitable[T]) -> tuple[T, int]:
    """`work`'s result and how often the event loop ran something else meanwhile: a
    test that work which says it hands the loop back does so."""
    turns = 0

    async def count() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    counter = asyncio.get_running_loop().create_task(count())
    try:
        return await work, turns
    finally:
        counter.cancel()


async def bounded(
    awaitable: Awaitable[T],
    *,
    within: float,
    what: str,
    state: Callable[[], str] | None = None,
) -> T:
    """Await something that signals by itself (an Event, a sync), failing as eventually()."""
    bound = asyncio.timeout(within)
    try:
        async with bound:
            return await awaitable
    except TimeoutError:
        if not bound.expired():
            raise
        raise _not_reached(within, what, state) from None


def _not_reached(within: float, what: str, state: Callable[[], str] | None) -> NotReached:
    detail = state() if state is not None else ""
    message = f"not within {within:g} s: {what}"
    return NotReached(f"{message}\n{detail}" if detail else message)


async def _next_check(changed: asyncio.Event | None, recheck_s: float | None) -> None:
    if changed is None:
        assert recheck_s is not None
        await asyncio.sleep(recheck_s)
        return
    if recheck_s is None:
        await changed.wait()
        return
    try:
        async with asyncio.timeout(recheck_s):
            await changed.wait()
    except TimeoutError:
        pass


async def process_ready(
    proc: subprocess.Popen[bytes], ready_url: str, log: Path, *, within: float, what: str
) -> None:
    """Until the process answers `ready_url` (a /readyz) with 200. Starting a process is
    not what tests measure (an agent compiles its eBPF program first: minutes with both
    cores busy), so the bound is generous; a process that exits fails at once with the
    tail of its log."""

    def log_tail(n: int) -> str:
        return log.read_text(errors="replace")[-n:] if log.exists() else ""

    async def answers() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited ({proc.returncode}):\n{log_tail(4000)}")
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http,
                http.get(ready_url, ssl=False) as answer,
            ):
                return answer.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    await eventually(
        answers,
        within=within,
        what=f"{what} ready ({ready_url})",
        recheck_s=0.3,
        state=lambda: log_tail(2000),
    )
