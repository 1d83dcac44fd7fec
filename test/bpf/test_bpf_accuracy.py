"""The kernel's per-endpoint latency against what the clients measured themselves."""

from __future__ import annotations

import random
import threading

import pytest
from bpf_loadgen import DelayServer, run_clients
from bpf_snapshots import BOTH_ENDS, assert_close, delta, exact_quantile
from conftest import TEST_BOUND_S

from aviator.agent.bpf import BpfLatencySource, EndpointKey

pytestmark = [pytest.mark.bpf, pytest.mark.timeout(TEST_BOUND_S, func_only=True)]


def test_fast_and_slow_servers_measured_per_ip(latency_source: BpfLatencySource) -> None:
    fast = DelayServer("127.0.10.1", lambda: 0.010).start()
    slow = DelayServer("127.0.10.2", lambda: 0.500).start()
    try:
        before = latency_source.read()
        results: dict[str, list[float]] = {}

        def drive(name: str, server: DelayServer, connections: int, each: int) -> None:
            results[name] = run_clients(server.host, server.port, connections, each)

        threads = [
            threading.Thread(target=drive, args=("fast", fast, 25, 44)),
            threading.Thread(target=drive, args=("slow", slow, 8, 5)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = latency_source.read()
    finally:
        fast.stop()
        slow.stop()

    assert len(results["fast"]) == 1100 and len(results["slow"]) == 40
    for name, server in (("fast", fast), ("slow", slow)):
        samples = results[name]
        for role in BOTH_ENDS:
            d = delta(before, after, EndpointKey(server.host, server.port, role))
            assert d.count == len(samples), f"{name}/{role}: {d.count} != {len(samples)}"
            assert d.hist.count == len(samples)
            assert d.aborted == 0 and d.rif == 0
            for q in (0.5, 0.99):
                assert_close(d.hist.quantile(q), exact_quantile(samples, q))
    # Nothing was measured under the clients' own (ephemeral) addresses as servers.
    servers_seen = {k for k in after if k.role == "server" and k.ip in ("127.0.10.1", "127.0.10.2")}
    assert servers_seen == {
        EndpointKey("127.0.10.1", fast.port, "server"),
        EndpointKey("127.0.10.2", slow.port, "server"),
    }


def test_lognormal_quantiles(latency_source: BpfLatencySource) -> None:
    rng = random.Random(7)
    lock = threading.Lock()

    def delay() -> float:
        with lock:  # median 15 ms, p99 ≈ 60 ms
            return rng.lognormvariate(-4.2, 0.6)

    server = DelayServer("127.0.10.3", delay).start()
    try:
        before = latency_source.read()
        samples = run_clients(server.host, server.port, 16, 40)
        after = latency_source.read()
    finally:
        server.stop()
    d = delta(before, after, EndpointKey(server.host, server.port, "server"))
    assert d.count == len(samples) == 640
    for q in (0.5, 0.9, 0.99):
        assert_close(d.hist.quantile(q), exact_quantile(samples, q), abs_us=0)
