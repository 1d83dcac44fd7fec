"""Supervised background tasks come back after any exception, and say why."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from aviator.runtime.supervise import Supervised, supervise


async def test_a_task_is_run_again_after_any_exception_or_return(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs = 0
    third = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise AttributeError("'list' object has no attribute 'get'")
        if runs == 2:
            return
        third.set()
        await asyncio.Event().wait()  # healthy from now on

    record = Supervised("flaky")
    with caplog.at_level(logging.INFO):
        task = asyncio.get_running_loop().create_task(
            supervise("flaky", flaky, record=record, initial_s=0.001, max_s=0.01)
        )
        async with asyncio.timeout(10):
            await third.wait()
    assert runs == 3 and record.restarts == 2 and record.last_error == "returned"
    assert "flaky failed; restarting it" in caplog.text
    assert "AttributeError" in caplog.text  # with its traceback
    assert "flaky returned; restarting it" in caplog.text
    task.cancel()  # only cancellation ends it
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()
