"""Diffing cumulative BPF snapshots and comparing them with client measurements."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aviator.agent.bpf import BpfLatencySource, EndpointCounters, EndpointKey
from aviator.latency.histogram import NUM_BUCKETS, Histogram, quantile_rank

EMPTY = EndpointCounters(buckets=[0] * NUM_BUCKETS, count=0, sum_us=0, max_us=0, rif=0, aborted=0)


@dataclass(frozen=True)
class EndpointDelta:
    hist: Histogram
    count: int
    aborted: int
    rif: int  # the gauge's current value (not a delta)
    statuses: int = 0
    errors: int = 0
    protocol: str = "opaque"  # the endpoint's (cumulative) protocol after


def delta(
    before: dict[EndpointKey, EndpointCounters],
    after: dict[EndpointKey, EndpointCounters],
    key: EndpointKey,
) -> EndpointDelta:
    old = before.get(key, EMPTY)
    new = after.get(key, EMPTY)
    return EndpointDelta(
        hist=Histogram(new.buckets).delta(Histogram(old.buckets)),
        count=new.count - old.count,
        aborted=new.aborted - old.aborted,
        rif=new.rif,
        statuses=new.statuses - old.statuses,
        errors=new.errors - old.errors,
        protocol=new.protocol,
    )


def exact_quantile(samples: list[float], q: float) -> float:
    """The nearest-rank quantile, the same rank the histogram reports."""
    ordered = sorted(samples)
    return ordered[quantile_rank(q, len(ordered)) - 1]


def assert_close(
    measured: float | None, truth: float, *, rel: float = 0.05, abs_us: float = 1000
) -> None:
    assert measured is not None, "no samples"
    tolerance = max(rel * truth, abs_us)
    assert abs(measured - truth) <= tolerance, (
        f"kernel {measured:.0f} µs vs client {truth:.0f} µs (tolerance {tolerance:.0f} µs)"
    )


def wait_for(
    source: BpfLatencySource,
    condition: Callable[[dict[EndpointKey, EndpointCounters]], bool],
    timeout: float = 5.0,
) -> dict[EndpointKey, EndpointCounters]:
    """Poll the maps until `condition` holds (map updates raise no event to await)."""
    deadline = time.monotonic() + timeout
    while True:
        snap = source.read()
        if condition(snap) or time.monotonic() > deadline:
            return snap
        time.sleep(0.01)


def traffic_and_probes(
    source: BpfLatencySource,
    before: dict[EndpointKey, EndpointCounters],
    host: str,
    port: int,
    want: tuple[int, int],
) -> tuple[int, int]:
    """(traffic, kubelet probes) counted on the server endpoint (host, port) since
    `before`, once they reach `want` (or what they are when the wait runs out)."""
    traffic = EndpointKey(host, port, "server")
    probes = EndpointKey(host, port, "probe")

    def now(s: dict[EndpointKey, EndpointCounters]) -> tuple[int, int]:
        return delta(before, s, traffic).count, delta(before, s, probes).count

    return now(wait_for(source, lambda s: now(s) == want))


# The two ends of a connection that measure a request (the `probe` role is the kubelet's
# probes of a server endpoint, tested on its own).
BOTH_ENDS = ("server", "client")
