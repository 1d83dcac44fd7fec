"""The shared HTTP probe: what it times, keep-alive, and failures at the timeout."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from aviator.latency.probing import HttpProber, ProbeCounters, ProbeTarget, probe_url


@dataclass
class Server:
    port: int
    peers: list[tuple[str, int]] = field(default_factory=list)  # one entry per request
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # set by every request

    def target(self, path: str) -> ProbeTarget:
        return ProbeTarget("127.0.0.1", self.port, path, "ns/p")


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server(0)

    async def answer(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        srv.peers.append(tuple(peer[:2]) if peer else ("", 0))
        srv.arrived.set()
        if request.path == "/slow":
            await asyncio.sleep(0.05)
        elif request.path == "/broken":
            return web.Response(status=503)
        elif request.path == "/hang":
            await asyncio.sleep(10)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    srv.port = runner.addresses[0][1]
    yield srv
    await runner.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_probes_time_requests_over_one_kept_alive_connection(server: Server) -> None:
    prober = HttpProber(timeout_s=1.0, concurrency=4, user_agent="test")
    fast, slow = ProbeCounters(), ProbeCounters()
    try:
        assert await prober.probe_times(server.target("/fast"), 3, fast) == 0
        assert await prober.probe_times(server.target("/slow"), 2, slow) == 0
    finally:
        await prober.close()
    assert (fast.count, fast.aborted, fast.rif) == (3, 0, 0)
    assert (slow.count, slow.aborted) == (2, 0)
    assert (fast.statuses, fast.errors) == (3, 0)
    assert 50_000 <= slow.hist.quantile(0.5) <= 1_000_000  # type: ignore[operator]
    assert fast.max_us < slow.max_us
    # Keep-alive: every probe of the batch went over the same connection.
    assert len(set(server.peers)) == 1 and len(server.peers) == 5


async def test_failures_are_samples_at_the_timeout(server: Server) -> None:
    prober = HttpProber(timeout_s=0.3, concurrency=4, user_agent="test")
    targets = [
        server.target("/broken"),
        server.target("/hang"),
        ProbeTarget("127.0.0.1", free_port(), "/", "ns/q"),  # connection refused
    ]
    counters = [ProbeCounters() for _ in targets]
    try:
        failed = await asyncio.gather(
            *(prober.probe_times(t, 2, c) for t, c in zip(targets, counters, strict=True))
        )
    finally:
        await prober.close()
    assert failed == [2, 2, 2]
    # Only the 5xx answer had a status to read: an error each time.
    assert [(c.statuses, c.errors) for c in counters] == [(2, 2), (0, 0), (0, 0)]
    for c in counters:
        assert (c.count, c.aborted, c.max_us, c.rif) == (2, 2, 300_000, 0)
        assert c.hist.quantile(0.5) == pytest.approx(300_000, rel=0.04)  # bucketed


def test_urls() -> None:
    assert probe_url("::1", 80, "/x") == "http://[::1]:80/x"
    assert ProbeTarget("10.0.0.1", 8080, "/", "ns/p").url == "http://10.0.0.1:8080/"


def test_frozen_counters_are_copies() -> None:
    c = ProbeCounters()
    c.record(1000)
    copy = c.frozen()
    c.record(2000)
    assert (copy.count, copy.sum_us, copy.max_us) == (1, 1000, 1000)
    assert copy.buckets != c.buckets


async def test_a_probe_in_flight_is_an_open_request(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    prober = HttpProber(timeout_s=0.5, concurrency=4, user_agent="test")
    c = ProbeCounters()
    try:
        task = asyncio.create_task(prober.probe(server.target("/hang"), c))
        async with asyncio.timeout(5):
            await server.arrived.wait()  # the probe is open at the pod
        seen = c.frozen()
        assert (seen.rif, seen.open_since) == (1, []) and seen.oldest_open_us >= 1
        # Its age is the clock's: 0.3 s later it is 0.3 s older.
        now = time.perf_counter()
        monkeypatch.setattr("aviator.latency.probing.time.perf_counter", lambda: now + 0.3)
        assert c.frozen().oldest_open_us >= 300_000
        monkeypatch.undo()
        await task  # times out at 0.5 s
    finally:
        await prober.close()
    done = c.frozen()
    assert (done.rif, done.oldest_open_us, c.open_since) == (0, 0, [])
