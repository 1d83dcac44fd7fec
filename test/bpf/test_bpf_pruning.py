"""The endpoints map under pod churn (aviator.agent.bpf.tracked), on the real program:
with pruning, waves of new pod addresses, many more than the map holds over the run,
are each measured; a read decodes only the endpoints that changed; what is pruned
leaves the kernel's map."""

from __future__ import annotations

import time

import pytest
from bpf_loadgen import DelayServer, KeepAliveClient
from conftest import require_bpf_privileges

from aviator.agent.bpf import BpfLatencySource, EndpointKey
from aviator.latency.schema import ROLES

pytestmark = [pytest.mark.bpf, pytest.mark.timeout(300, func_only=True)]  # its own work

# 127.0.80.0 - 127.0.87.255: 2,048 "pod" addresses, two endpoints each (the server's
# own socket and the client's view), four times the test's map of CAPACITY entries.
WAVES = 16
PER_WAVE = 128
CAPACITY = 1024


def _wave_ips(wave: int) -> list[str]:
    first = wave * PER_WAVE
    return [f"127.0.{80 + (first + i) // 256}.{(first + i) % 256}" for i in range(PER_WAVE)]


def _ours(ip: str) -> bool:
    parts = ip.split(".")
    return len(parts) == 4 and parts[:2] == ["127", "0"] and 80 <= int(parts[2]) <= 87


def _hit(ips: list[str], port: int) -> None:
    """One request to each address (a connection each)."""
    for ip in ips:
        client = KeepAliveClient(ip, port)
        try:
            client.request()
        finally:
            client.close()


def _measured(snap: dict[EndpointKey, object], ips: list[str], port: int) -> list[str]:
    return [ip for ip in ips if all(EndpointKey(ip, port, r) in snap for r in ROLES)]


def test_churned_pods_are_measured_to_the_last_wave_when_the_agent_prunes() -> None:
    require_bpf_privileges()
    # A program of its own with a small endpoints map (the session's has the agent's
    # size, more than the run): it prunes every endpoint but the next wave's, the
    # machine's other endpoints too, so that they do not fill it.
    server = DelayServer("0.0.0.0", lambda: 0.0).start()
    try:
        with BpfLatencySource.load(max_endpoints=CAPACITY) as source:
            capacity = source.stats()["endpoints_capacity"]
            assert 4 * capacity <= 2 * WAVES * PER_WAVE  # the run outgrows the map
            peak = 0
            for wave in range(WAVES):
                ips = _wave_ips(wave)
                _hit(ips, server.port)
                snap = source.read()
                missing = [ip for ip in ips if ip not in _measured(snap, ips, server.port)]
                assert not missing, f"wave {wave}: {len(missing)} pods not measured"
                peak = max(peak, sum(1 for k in snap if _ours(k.ip)))
                # The agent's upkeep: this wave's pods are gone, the next wave's are local.
                local = set(_wave_ips(wave + 1)) if wave + 1 < WAVES else set()
                source.prune(lambda ip, local=local: ip in local, 0.0)
            left = list(source.read_all())
    finally:
        server.stop()
    print(f"{WAVES * PER_WAVE} pods in {WAVES} waves; map capacity {capacity}; ours at peak {peak}")
    assert peak <= 2 * PER_WAVE + 8
    # What was pruned left the kernel's map, not only the agent's copy.
    assert not [k for k in left if _ours(k.ip)]


def test_a_read_decodes_only_the_endpoints_that_changed(
    latency_source: BpfLatencySource,
) -> None:
    require_bpf_privileges()
    server = DelayServer("0.0.0.0", lambda: 0.0).start()
    ips = _wave_ips(0)[:200] if PER_WAVE >= 200 else _wave_ips(0) + _wave_ips(1)[:72]
    try:
        _hit(ips, server.port)  # 400 endpoints, idle from now on
        latency_source.read()
        full, tracked, decoded = [], [], []
        for _ in range(5):
            _hit(ips[:2], server.port)  # two pods busy
            t = time.perf_counter()
            latency_source.read_all()  # every endpoint decoded
            full.append(time.perf_counter() - t)
            _hit(ips[:2], server.port)
            t = time.perf_counter()
            snap = latency_source.read()
            tracked.append(time.perf_counter() - t)
            decoded.append(latency_source.tracked.last.decoded)
            assert _measured(snap, ips[:2], server.port) == ips[:2]
        total = len(latency_source.tracked)
    finally:
        server.stop()
        latency_source.prune(lambda ip: not _ours(ip), 0.0)
    full_ms, tracked_ms = 1000 * min(full), 1000 * min(tracked)
    print(
        f"{total} endpoints in the map, 4 busy: full decode {full_ms:.2f} ms, "
        f"read by change {tracked_ms:.2f} ms ({min(decoded)}..{max(decoded)} decoded)"
    )
    # Two busy pods are 4 endpoints, marked now and re-read once; others on the machine
    # may be busy too, but far fewer than the 400 idle ones here.
    assert min(decoded) < total / 4
    assert tracked_ms < full_ms
