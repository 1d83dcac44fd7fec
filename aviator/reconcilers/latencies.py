"""The latency of one policy's pods, read at one instant for a plan.

`read_latencies` is the I/O step before planning: for `latencySource: probe` it sends a
round of controller probes when an evaluation is due, then it reads every pod's
estimate. The `PodLatencies` it returns is a read-only view the pure planner queries
(`estimate` per pod, `active_p99_ms` for the set it chose); it holds no clock of its
own, so a plan's inputs are fixed once read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aviator.kube.pods import pod_ips, pod_name
from aviator.latency.histogram import Histogram
from aviator.latency.store import LatencyStore, PodLatency
from aviator.reconcilers.evaluation import ParsedPolicy
from aviator.reconcilers.probe import Prober, ProbeTarget

JSON = dict[str, Any]


@dataclass(frozen=True)
class PodLatencies:
    """Per pod name: its estimate (None = unknown); and the merged histogram of any
    set of pods, for the p99 of the traffic the active set serves."""

    by_pod: dict[str, PodLatency | None]
    merged: Callable[[Sequence[JSON]], Histogram]

    def estimate(self, name: str) -> PodLatency | None:
        return self.by_pod.get(name)

    def active_p99_ms(self, pods: Sequence[JSON]) -> float | None:
        value = self.merged(pods).quantile(0.99)
        return None if value is None else value / 1000.0

    def sources(self) -> Iterable[str]:
        return (lat.source for lat in self.by_pod.values() if lat is not None and lat.samples)


def _probe_target(pod: JSON, parsed: ParsedPolicy) -> ProbeTarget:
    return ProbeTarget(pod_ips(pod)[0], parsed.probe_port, parsed.probe_path)


async def read_latencies(
    parsed: ParsedPolicy,
    pods: Sequence[JSON],
    store: LatencyStore,
    prober: Prober,
    now: float,
    *,
    probe: bool,
) -> PodLatencies:
    """Every pod's latency from the policy's source. Probe mode sends a round of
    probes only when `probe` (an evaluation is due); otherwise it reports what the last
    rounds measured."""
    if parsed.latency_source == "probe":
        targets = {pod_name(p): _probe_target(p, parsed) for p in pods}
        if probe:
            # A window of a few intervals: recovery shows within a few evaluations.
            await prober.probe_round(targets.values(), window_s=3 * parsed.interval_s)
        by_pod: dict[str, PodLatency | None] = {}
        for name, target in targets.items():
            est = prober.estimate(target)
            by_pod[name] = (
                None
                if est is None
                else PodLatency(
                    p50_ms=est.p50_ms,
                    p90_ms=est.p90_ms,
                    p99_ms=est.p99_ms,
                    rif=0,
                    samples=est.samples,
                    age_s=est.age_s,
                    source="probe",
                )
            )

        def merged_probes(active: Sequence[JSON]) -> Histogram:
            return Histogram.merge_all(prober.histogram(_probe_target(p, parsed)) for p in active)

        return PodLatencies(by_pod, merged_probes)

    by_pod = {}
    for pod in pods:
        estimate = None
        for ip in pod_ips(pod):
            estimate = store.estimate(ip, now)
            if estimate is not None:
                break
        by_pod[pod_name(pod)] = estimate

    def merged_store(active: Sequence[JSON]) -> Histogram:
        return store.merged((ip for p in active for ip in pod_ips(p)), now)

    return PodLatencies(by_pod, merged_store)
