"""The h2c and gRPC clients multiplex many concurrent streams on ONE TCP connection
(counted by a relay in front of the test app), time every stream, and stay bounded in
count; and h2load, a load tool nobody here wrote, agrees with the app's own counts."""

from __future__ import annotations

import asyncio
import json
import re
import shutil

import pytest
from apps_support import Relay, running_app

from aviator.testing.grpcclient import GrpcClient, run_with_new_channels
from aviator.testing.h2client import H2cClient

STREAMS = 100
LATENCY_S = 0.4


def _overlap(spans: list[tuple[int, float]]) -> bool:
    """Every request was open at one moment: the last one started before the first ended."""
    starts = [sent for sent, _ in spans]
    ends = [sent + latency * 1e9 for sent, latency in spans]
    return max(starts) < min(ends)


@pytest.mark.parametrize("protocol", ["h2c", "grpc"])
async def test_h2_client_multiplexes_on_one_connection(protocol: str) -> None:
    with running_app(protocol, LATENCY=f"{LATENCY_S * 1000:g}ms") as port:
        async with (
            Relay(port).running() as relay,
            H2cClient("127.0.0.1", relay.port, grpc=protocol == "grpc") as client,
        ):
            samples = await client.run(STREAMS, requests=STREAMS, duration_s=30)
            stamped = client.kernel_stamps
    assert stamped, "requests timed by the kernel's stamps, not the event loop's clock"
    assert relay.accepted == 1
    assert len(samples) == STREAMS and all(s.ok for s in samples), samples[:3]
    spans = [(s.sent_ns, s.latency_s) for s in samples if s.latency_s is not None]
    assert len(spans) == STREAMS and _overlap(spans)
    assert all(latency >= LATENCY_S for _, latency in spans)


async def test_grpcio_client_multiplexes_on_one_channel_connection() -> None:
    with running_app("grpc", LATENCY=f"{LATENCY_S * 1000:g}ms") as port:
        async with (
            Relay(port).running() as relay,
            GrpcClient(f"127.0.0.1:{relay.port}") as client,
        ):
            samples = await client.run(STREAMS, requests=STREAMS, duration_s=30)
    assert relay.accepted == 1
    assert len(samples) == STREAMS and all(s.ok for s in samples)
    spans = [(s.sent_ns, s.latency_s) for s in samples if s.latency_s is not None]
    assert len(spans) == STREAMS and _overlap(spans)
    assert {s.served_by for s in samples} == {"grpc-pod"}


async def test_grpcio_workers_open_a_new_channel_every_few_rpcs() -> None:
    with running_app("grpc", LATENCY="5ms") as port:
        async with Relay(port).running() as relay:
            samples = await run_with_new_channels(
                f"127.0.0.1:{relay.port}", workers=3, rpcs_per_channel=4, requests=24, duration_s=60
            )
    assert len(samples) == 24 and all(s.ok for s in samples)
    assert relay.accepted == 6  # 24 RPCs, 4 per channel


async def test_client_runs_are_bounded_in_count_and_time() -> None:
    with running_app("h2c", LATENCY="50ms") as port:
        async with H2cClient("127.0.0.1", port) as client:
            assert len(await client.run(10, requests=25, duration_s=30)) == 25
            # Time-bounded: 10 streams at 50 ms cannot make 10,000 requests in 0.3 s.
            assert len(await client.run(10, requests=10_000, duration_s=0.3)) < 1000


def _h2load_counts(output: str) -> tuple[int, int, int]:
    """(done, 2xx, 5xx) from h2load's summary ("succeeded" there means 2xx and 3xx)."""
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done", output)
    codes = re.search(r"status codes: (\d+) 2xx, \d+ 3xx, \d+ 4xx, (\d+) 5xx", output)
    assert done and codes, output
    return int(done.group(1)), int(codes.group(1)), int(codes.group(2))


async def test_h2load_counts_match_the_app() -> None:
    h2load = shutil.which("h2load")
    if h2load is None:
        pytest.skip("h2load is missing: `make setup` installs nghttp2-client")
    with running_app("h2c", LATENCY="5ms", ERROR_RATE="0.25") as port:
        async with Relay(port).running() as relay:
            proc = await asyncio.create_subprocess_exec(
                h2load,
                "-n",
                "300",
                "-c",
                "1",
                "-m",
                "10",
                f"http://127.0.0.1:{relay.port}/",
                stdout=asyncio.subprocess.PIPE,
            )
            async with asyncio.timeout(60):
                out, _ = await proc.communicate()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /control HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        counts = json.loads((await reader.read()).partition(b"\r\n\r\n")[2])
        writer.close()
    done, ok, failed = _h2load_counts(out.decode())
    assert relay.accepted == 1
    assert done == 300 and ok + failed == 300 and failed > 0
    assert counts["requests"] == 300 and counts["errors"] == failed
