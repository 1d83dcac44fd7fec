"""Keep-warm and probe-mode probing against small local HTTP servers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from aviator.agent.prober import NodeProber, ProbeKey, TokenBucket, keep_warm_protocol
from aviator.latency.h2c import PREFACE
from aviator.latency.probing import ProbeTarget


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket() -> None:
    clock = Clock()
    bucket = TokenBucket(rate_per_s=10, burst=5, clock=clock)
    assert bucket.take(3) == 3
    assert bucket.take(3) == 2
    assert bucket.take(1) == 0
    clock.now = 0.25  # 2.5 tokens back
    assert bucket.take(5) == 2
    clock.now = 100.0  # never more than the burst
    assert bucket.take(50) == 5
    with pytest.raises(ValueError):
        TokenBucket(0, 1)


@pytest.fixture
async def server() -> AsyncIterator[tuple[ProbeTarget, list[str]]]:
    paths: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        paths.append(request.path)
        if request.path == "/boom":
            return web.Response(status=503)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield ProbeTarget("127.0.0.1", port, "/ping", "ns/p"), paths
    await runner.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_keep_warm_tops_up_to_min_samples(server: tuple[ProbeTarget, list[str]]) -> None:
    target, paths = server
    prober = NodeProber(min_samples=4, rate_per_s=1000)
    key = (target.ip, target.port)
    try:
        assert prober.schedule({key: target}, {key: 1}) == 3
        await prober.wait_idle()
        assert paths == ["/ping"] * 3
        assert prober.schedule({key: target}, {key: 4}) == 0
        counters = prober.read()[ProbeKey(target.ip, target.port)]
        assert (counters.count, counters.aborted, counters.rif) == (3, 0, 0)
        assert 0 < counters.max_us < 2_000_000
    finally:
        await prober.close()


async def test_probe_mode_probes_every_target_and_records_failures_as_timeouts(
    server: tuple[ProbeTarget, list[str]],
) -> None:
    target, _ = server
    failing = ProbeTarget(target.ip, target.port, "/boom", "ns/p")
    refused = ProbeTarget("127.0.0.1", free_port(), "/", "ns/q")
    prober = NodeProber(min_samples=2, timeout_s=0.5, rate_per_s=1000)
    try:
        targets = {(target.ip, target.port): failing, (refused.ip, refused.port): refused}
        assert prober.schedule(targets, None) == 4
        await prober.wait_idle()
        read = prober.read()
        for t in (failing, refused):
            c = read[ProbeKey(t.ip, t.port)]
            assert (c.count, c.aborted, c.max_us) == (2, 2, 500_000)
        assert prober.stats.failed == 4
        # Targets no longer wanted are forgotten.
        prober.schedule({}, None)
        assert prober.read() == {}
    finally:
        await prober.close()


async def test_rate_limit_and_one_batch_per_target(server: tuple[ProbeTarget, list[str]]) -> None:
    target, _ = server
    prober = NodeProber(min_samples=5, rate_per_s=0.001, burst=3)
    key = (target.ip, target.port)
    try:
        assert prober.schedule({key: target}, None) == 3
        assert prober.stats.rate_limited == 2
        # The batch has not even begun (no await since): the target is busy.
        assert prober.schedule({key: target}, None) == 0
        assert prober.stats.skipped_busy == 1
        await prober.wait_idle()
        assert prober.schedule({key: target}, None) == 0  # out of tokens
    finally:
        await prober.close()


def test_keep_warm_speaks_what_the_program_saw() -> None:
    assert keep_warm_protocol(None) == "http1"  # nothing seen yet: HTTP/1.1 as ever
    assert keep_warm_protocol("http1") == "http1"
    assert keep_warm_protocol("h2") == "h2"
    assert keep_warm_protocol("grpc") == "grpc"
    assert keep_warm_protocol("opaque") is None  # TLS or unknown framing: no probes


def test_keep_warm_of_a_pod_that_served_nothing_follows_a_grpc_method_path() -> None:
    """An idle gRPC pod probed in HTTP/1.1 answers at once with a GOAWAY (a sample far
    below its latency, which ranked a slow gRPC pod fast): a probePath that can only be
    a gRPC method makes its first probes gRPC; what the program saw still wins."""
    method = "/aviator.testapp.TestApp/Call"
    assert keep_warm_protocol(None, method) == "grpc"
    assert keep_warm_protocol(None, "/grpc.health.v1.Health/Check") == "grpc"
    assert keep_warm_protocol("http1", method) == "http1"
    assert keep_warm_protocol("h2", method) == "h2"
    assert keep_warm_protocol("opaque", method) is None
    # Paths an HTTP/1.1 app serves stay HTTP/1.1.
    for path in ("/", "/healthz", "/api.v1/users", "/v1.2/status", "/static/app.js", "/a.b/c"):
        assert keep_warm_protocol(None, path) == "http1", path


async def test_keep_warm_batches_speak_the_targets_protocol() -> None:
    """What reaches a server for each protocol: an HTTP/1.1 request line, the h2c
    preface and a GET of the path, a gRPC call of the health check; opaque: nothing."""
    first: dict[int, bytes] = {}

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = writer.get_extra_info("sockname")[1]
        data = b""
        while len(data) < 120 and (chunk := await reader.read(1024)):
            data += chunk
        first.setdefault(port, data)
        writer.close()

    servers = [await asyncio.start_server(record, "127.0.0.1", 0) for _ in range(4)]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    targets = {
        ("127.0.0.1", port): ProbeTarget("127.0.0.1", port, "/ping", "ns/p", protocol=proto)
        for port, proto in zip(ports, ["http1", "h2", "grpc", "opaque"], strict=True)
    }
    prober = NodeProber(min_samples=1, timeout_s=1.0, rate_per_s=1000)
    try:
        assert prober.schedule(targets, {}) == 3
        assert prober.stats.skipped_opaque == 1
        await prober.wait_idle()
    finally:
        await prober.close()
        for s in servers:
            s.close()
    http1, h2, grpc, opaque = ports
    assert first[http1].startswith(b"GET /ping HTTP/1.1")
    assert first[h2].startswith(PREFACE) and b"/ping" in first[h2]
    assert first[grpc].startswith(PREFACE) and b"/grpc.health.v1.Health/Check" in first[grpc]
    assert opaque not in first
