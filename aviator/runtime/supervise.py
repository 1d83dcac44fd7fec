"""Background tasks that never die quietly: `supervise` runs a coroutine function again
after it raises or returns, logging why, with a growing pause between runs.

Every long-running task of the agent and the controller (a stream to a controller
replica, hand-offs, leader election and reconciling) runs under it, so an exception
nobody foresaw (a reply of a shape nobody expected, a bug) costs one run, is logged
with its traceback, and the task comes back: never a process that looks alive and has
silently stopped doing its job. Only cancellation ends a supervised task.

The pause starts at `initial_s`, doubles up to `max_s`, and starts over once a run
has lasted `healthy_after_s` (a task that fails now and then is not slowed down for
good).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aviator.informers.backoff import Backoff

log = logging.getLogger(__name__)


@dataclass
class Supervised:
    """What happened to one supervised task (for status pages and tests)."""

    name: str
    restarts: int = 0
    last_error: str = ""


async def supervise(
    name: str,
    run: Callable[[], Awaitable[object]],
    *,
    record: Supervised | None = None,
    initial_s: float = 0.5,
    max_s: float = 30.0,
    healthy_after_s: float = 60.0,
    logger: logging.Logger | None = None,
) -> None:
    """Run `run()` until cancelled, again after every exception or return."""
    say = logger or log
    state = record or Supervised(name)
    backoff = Backoff(initial_s=initial_s, max_s=max_s, jitter=0.2)
    while True:
        started = time.monotonic()
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            state.last_error = f"{type(exc).__name__}: {exc}"
            say.exception("%s failed; restarting it", name)
        else:
            state.last_error = "returned"
            say.warning("%s returned; restarting it", name)
        if time.monotonic() - started >= healthy_after_s:
            backoff.reset()
        state.restarts += 1
        await asyncio.sleep(backoff.failure(time.monotonic()))
