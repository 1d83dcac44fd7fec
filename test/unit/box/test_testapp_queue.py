"""The test app's queue mode: slots, a FIFO queue, and the gauge on a metrics port."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import pytest

from aviator.agent.loads import gauge_values
from aviator.box.files import TESTAPP
from aviator.box.localapp import running_app
from aviator.testing.ports import free_port

if str(TESTAPP.parent) not in sys.path:
    sys.path.insert(0, str(TESTAPP.parent))

from testapp_queue import Slots, exposition


async def test_slots_serve_at_most_their_number_and_queue_the_rest_in_order() -> None:
    slots = Slots(2)
    order: list[int] = []
    release = asyncio.Event()

    async def request(i: int) -> None:
        async with slots.slot():
            order.append(i)
            await release.wait()

    tasks = [asyncio.create_task(request(i)) for i in range(5)]
    for _ in range(100):  # the tasks' first steps: each takes a slot or queues
        if slots.waiting == 3:
            break
        await asyncio.sleep(0)
    assert slots.busy == 2 and order == [0, 1]
    assert "testapp_queue_length 3" in exposition(slots, type("A", (), {"requests": 5})())
    tasks[3].cancel()  # a client gives up while queued: it leaves the queue
    await asyncio.gather(tasks[3], return_exceptions=True)
    assert slots.waiting == 2
    release.set()
    await asyncio.gather(*tasks[:3], tasks[4])
    assert order == [0, 1, 2, 4] and slots.busy == 0 and slots.waiting == 0


def test_no_slots_is_refused() -> None:
    with pytest.raises(ValueError):
        Slots(0)


async def test_the_app_queues_and_reports_the_queue_on_its_metrics_port() -> None:
    metrics = free_port()
    with running_app("http1", LATENCY="300ms", SLOTS="1", METRICS_PORT=str(metrics)) as port:
        async with aiohttp.ClientSession() as session:

            async def call() -> float:
                loop = asyncio.get_running_loop()
                started = loop.time()
                async with session.get(f"http://127.0.0.1:{port}/work") as resp:
                    assert resp.status == 200
                return loop.time() - started

            calls = [asyncio.create_task(call()) for _ in range(3)]
            url = f"http://127.0.0.1:{metrics}/metrics"
            for _ in range(200):  # bounded: until two requests wait for the one slot
                async with session.get(url) as resp:
                    seen = gauge_values(await resp.text(), {"testapp_queue_length"})
                if seen.get("testapp_queue_length") == 2.0:
                    break
                await asyncio.sleep(0.01)
            assert seen == {"testapp_queue_length": 2.0}
            times = sorted(await asyncio.gather(*calls))
            assert times[2] >= 0.85  # the third waited for two services of 300 ms
            async with session.get(url) as resp:
                assert gauge_values(await resp.text(), {"testapp_queue_length"}) == {
                    "testapp_queue_length": 0.0
                }
            async with session.get(f"http://127.0.0.1:{metrics}/other") as resp:
                assert resp.status == 404
