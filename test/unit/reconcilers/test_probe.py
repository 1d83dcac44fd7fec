from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from aviator.reconcilers.probe import Prober, ProbeTarget


@pytest.fixture
async def server() -> AsyncIterator[int]:
    async def fast(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(0.05)
        return web.Response(text="ok")

    async def broken(_: web.Request) -> web.Response:
        return web.Response(status=503)

    async def hang(_: web.Request) -> web.Response:
        await asyncio.sleep(10)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/fast", fast)
    app.router.add_get("/slow", slow)
    app.router.add_get("/broken", broken)
    app.router.add_get("/hang", hang)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield port
    await runner.cleanup()


async def test_probe_measures_and_counts_failures(server: int) -> None:
    now = [1000.0]
    prober = Prober(timeout_s=1.0, samples_per_round=2, forget_after_s=60, clock=lambda: now[0])
    fast = ProbeTarget("127.0.0.1", server, "/fast")
    slow = ProbeTarget("127.0.0.1", server, "/slow")
    broken = ProbeTarget("127.0.0.1", server, "/broken")
    hang = ProbeTarget("127.0.0.1", server, "/hang")
    closed = ProbeTarget("127.0.0.1", 1, "/")
    try:
        await prober.probe_round([fast, slow, broken, hang, closed])
        f, s = prober.estimate(fast), prober.estimate(slow)
        assert f is not None and s is not None
        assert f.failures == 0 and s.failures == 0 and f.samples == 2
        assert s.p99_ms >= 48 and f.p99_ms < s.p99_ms
        for t in (broken, hang, closed):
            e = prober.estimate(t)
            assert e is not None and e.failures == 2
            assert e.p50_ms == pytest.approx(1000, rel=0.04)  # the timeout, bucketed
        # rounds accumulate within the window; other targets stay (another policy
        # may still probe them) until nobody has for forget_after_s
        await prober.probe_round([fast])
        assert prober.estimate(slow) is not None
        assert prober.estimate(fast) is not None and prober.estimate(fast).samples == 4  # type: ignore[union-attr]
        now[0] += 61
        await prober.probe_round([fast], window_s=10.0)
        assert prober.estimate(slow) is None
        assert prober.estimate(fast) is not None and prober.estimate(fast).samples == 2  # type: ignore[union-attr]
    finally:
        await prober.close()


def test_ipv6_url() -> None:
    assert ProbeTarget("::1", 80, "/x").url == "http://[::1]:80/x"


async def test_window_ages_without_new_rounds(server: int) -> None:
    """Slow samples of a target that is not probed for a while age out of its window
    (they must not pin an ejected pod's p99 forever)."""
    now = [1000.0]
    prober = Prober(timeout_s=1.0, samples_per_round=2, forget_after_s=300, clock=lambda: now[0])
    slow = ProbeTarget("127.0.0.1", server, "/slow")
    try:
        await prober.probe_round([slow], window_s=3.0)
        assert prober.estimate(slow) is not None
        now[0] += 2.0
        assert prober.estimate(slow) is not None  # still inside the window
        now[0] += 2.0
        assert prober.estimate(slow) is None  # aged out: no stale slow verdict
        assert prober.histogram(slow).count == 0
    finally:
        await prober.close()
