"""The agent's h2c and gRPC probes (aviator.latency.h2probing) against the test app in
its h2c and gRPC modes: the configured latency, the health check, errors, one
connection per batch, and a server that does not speak HTTP/2 (a failure at the
timeout, not a hang)."""

from __future__ import annotations

import asyncio
import json

import grpc.aio
import pytest
from apps_support import Relay, running_app

from aviator.latency.h2probing import GRPC_HEALTH_CHECK, H2Prober, grpc_probe_path
from aviator.latency.probing import ProbeCounters, ProbeTarget

METHOD = "/aviator.testapp.TestApp/Call"


@pytest.mark.parametrize(
    ("path", "called"),
    [
        ("/", GRPC_HEALTH_CHECK),
        ("/healthz", GRPC_HEALTH_CHECK),
        ("/ready/now?x=1", GRPC_HEALTH_CHECK),
        ("/a/b/c", GRPC_HEALTH_CHECK),
        (METHOD, METHOD),
        ("/Greeter/SayHello", "/Greeter/SayHello"),
        (GRPC_HEALTH_CHECK, GRPC_HEALTH_CHECK),
    ],
)
def test_which_method_a_grpc_probe_calls(path: str, called: str) -> None:
    assert grpc_probe_path(path) == called


def prober(timeout_s: float = 5.0) -> H2Prober:
    return H2Prober(timeout_s=timeout_s, semaphore=asyncio.Semaphore(4), user_agent="test")


async def requests_served(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await channel.unary_unary("/aviator.testapp.TestApp/Control")(b"", timeout=5)
    return int(json.loads(reply)["requests"])


@pytest.mark.parametrize(("protocol", "path"), [("h2c", "/work"), ("grpc", METHOD)])
async def test_probes_take_the_configured_latency_over_one_connection(
    protocol: str, path: str
) -> None:
    with running_app(protocol, LATENCY="60ms") as port:
        async with Relay(port).running() as relay:
            counters = ProbeCounters()
            target = ProbeTarget("127.0.0.1", relay.port, path, "ns/p")
            failed = await prober().probe_times(target, 3, counters, grpc=protocol == "grpc")
    assert failed == 0 and counters.aborted == 0
    assert counters.count == counters.statuses == 3 and counters.errors == 0
    assert counters.rif == 0 and not counters.open_since
    assert 60_000 <= counters.sum_us / 3 < 1_000_000
    assert relay.accepted == 1  # the batch's probes shared one connection
    assert counters.protocol == ("grpc" if protocol == "grpc" else "h2")


async def test_grpc_default_path_calls_the_health_check() -> None:
    with running_app("grpc", LATENCY="2s") as port:
        counters = ProbeCounters()
        failed = await prober().probe_times(
            ProbeTarget("127.0.0.1", port, "/", "ns/p"), 2, counters, grpc=True
        )
        served = await requests_served(port)
    assert failed == 0 and counters.count == 2
    assert counters.max_us < 2_000_000  # not the app's 2 s work
    assert served == 0  # the health check is not a measured request


@pytest.mark.parametrize("protocol", ["h2c", "grpc"])
async def test_errors_are_failures(protocol: str) -> None:
    with running_app(protocol, LATENCY="2s", ERROR_RATE="1") as port:
        counters = ProbeCounters()
        target = ProbeTarget("127.0.0.1", port, METHOD, "ns/p")
        failed = await prober().probe_times(target, 2, counters, grpc=protocol == "grpc")
    assert failed == 2 and counters.aborted == 2
    assert counters.statuses == counters.errors == 2
    assert counters.max_us == 5_000_000  # recorded at the timeout


async def test_a_server_without_http2_fails_at_the_timeout() -> None:
    """An HTTP/1.1-only server answers the preface with a 400 and closes, or waits:
    either way the probe fails within its timeout."""
    with running_app("http1", LATENCY="10ms") as port:
        counters = ProbeCounters()
        failed = await asyncio.wait_for(
            prober(timeout_s=1.0).probe_times(
                ProbeTarget("127.0.0.1", port, "/", "ns/p"), 2, counters, grpc=True
            ),
            5.0,
        )
    assert failed == 2 and counters.aborted == 2 and counters.rif == 0
