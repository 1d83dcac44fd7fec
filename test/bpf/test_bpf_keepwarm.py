"""The agent's keep-warm probes, as its prober sends them, to the test app in its h2c
and gRPC modes, measured by the real program: each probe is one h2 or gRPC sample
with status OK on the server's endpoint, timed as the app's configured latency (or
at once for the gRPC health check, which does no work), and counted in `keepwarm`
(the loader's own streams)."""

from __future__ import annotations

import pytest
from bpf_snapshots import delta, wait_for
from conftest import TEST_BOUND_S

from aviator.agent.bpf import BpfLatencySource, EndpointKey
from aviator.agent.prober import NodeProber
from aviator.box.localapp import running_app
from aviator.latency.probing import ProbeTarget
from aviator.latency.schema import AppProtocol

pytestmark = [pytest.mark.bpf, pytest.mark.timeout(TEST_BOUND_S, func_only=True)]

LATENCY_US = 30_000
METHOD = "/aviator.testapp.TestApp/Call"
PROBES = 5


@pytest.mark.parametrize(
    ("app", "host", "seen", "path", "works"),
    [
        ("h2c", "127.0.57.1", "h2", "/work", True),
        ("grpc", "127.0.57.2", "grpc", METHOD, True),
        ("grpc", "127.0.57.3", "grpc", "/", False),  # the health check
    ],
)
async def test_keep_warm_probes_are_measured_in_the_protocol(
    latency_source: BpfLatencySource,
    app: str,
    host: str,
    seen: AppProtocol,
    path: str,
    works: bool,
) -> None:
    with running_app(app, host, LATENCY=f"{LATENCY_US // 1000}ms") as port:
        key = EndpointKey(host, port, "server")
        target = ProbeTarget(host, port, path, "ns/pod", protocol=seen)
        prober = NodeProber(min_samples=PROBES, timeout_s=5.0, rate_per_s=1000)
        before = latency_source.read()
        try:
            assert prober.schedule({(host, port): target}, {}) == PROBES
            await prober.wait_idle()
        finally:
            await prober.close()
        assert prober.stats.failed == 0
        snap = wait_for(latency_source, lambda s: delta(before, s, key).count >= PROBES)
    got = delta(before, snap, key)
    assert (got.count, got.aborted, got.statuses, got.errors) == (PROBES, 0, PROBES, 0), got
    assert got.protocol == seen
    # The loader's own streams (this process is the agent here) count as keep-warm.
    old = before[key].keepwarm if key in before else 0
    assert snap[key].keepwarm - old == PROBES
    p50 = got.hist.quantile(0.5)
    assert p50 is not None
    if works:
        assert LATENCY_US * 0.968 <= p50 < 10 * LATENCY_US, p50
    else:
        assert p50 < LATENCY_US, p50  # the health check does not wait the app's latency
