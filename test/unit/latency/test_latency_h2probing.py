"""The h2c/gRPC prober's I/O against servers that send arbitrary bytes: whatever comes
back, a probe ends within its timeout, is recorded once, and never raises."""

from __future__ import annotations

import asyncio
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aviator.latency.h2c import frame
from aviator.latency.h2probing import H2Prober
from aviator.latency.probing import ProbeCounters, ProbeTarget

TIMEOUT_S = 0.3

frames = st.builds(
    frame,
    st.integers(0, 10),
    st.integers(0, 255),
    st.sampled_from([0, 1, 3]),
    st.binary(max_size=30),
)


async def probe_against(replies: list[bytes], close: bool, grpc: bool) -> ProbeCounters:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        for chunk in replies:
            writer.write(chunk)
        await writer.drain()
        if close:
            writer.close()
        else:
            await reader.read()  # hold the connection until the client gives up

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    prober = H2Prober(timeout_s=TIMEOUT_S, semaphore=asyncio.Semaphore(2), user_agent="t")
    counters = ProbeCounters()
    try:
        await prober.probe_times(
            ProbeTarget("127.0.0.1", port, "/", "ns/p"), 2, counters, grpc=grpc
        )
    finally:
        server.close()
    return counters


@given(st.lists(frames, max_size=12), st.binary(max_size=20), st.booleans(), st.booleans())
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_replies_end_within_the_timeout(
    replies: list[bytes], junk: bytes, close: bool, grpc: bool
) -> None:
    started = time.monotonic()
    counters = asyncio.run(probe_against([*replies, junk], close, grpc))
    assert time.monotonic() - started < 2 * (TIMEOUT_S + 0.5)
    assert counters.count == 2 and counters.rif == 0 and not counters.open_since
    assert counters.aborted + (counters.statuses - counters.errors) == 2
