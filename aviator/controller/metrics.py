"""The controller's Prometheus metrics, on one registry per process (tests use fresh ones).

| metric | type | labels | meaning |
|---|---|---|---|
| aviator_reconcile_duration_seconds | histogram | result | time per reconcile (ok, requeue, error), from the loop |
| aviator_reconcile_errors_total | counter | — | reconciles that failed and were retried |
| aviator_policy_active_pods | gauge | namespace, policy | pods serving |
| aviator_policy_total_pods | gauge | namespace, policy | eligible pods |
| aviator_policy_p99_latency_ms | gauge | namespace, policy | p99 of the active set (merged) |
| aviator_ejections_total | counter | namespace, policy | circuit-breaker ejections |
| aviator_api_writes_total | counter | kind, verb | writes the API server accepted, from the writer |
| aviator_latency_store_endpoints | gauge | — | endpoints held by the latency store |
| aviator_latency_store_buckets | gauge | — | histogram buckets its deltas hold (what its memory bound counts) |
| aviator_is_leader | gauge | — | 1 while this replica leads (with sharding: while it holds its member Lease) |
| aviator_shard_owned_policies | gauge | shard | policies this replica owns and reconciles (sharding only; shard = its identity) |
| aviator_shard_handovers_total | counter | shard, direction | policies this replica gained (in) or let go (out), sharding only |
| aviator_stalled_pod_enqueues_total | counter | — | policies enqueued at once because an agent reported a pod's request open past their p99Threshold |
| aviator_policy_condition | gauge | namespace, policy, type, status, reason | 1 per condition each policy's status holds (read from the policy cache at scrape time, on every replica; alerts aggregate with max by (namespace, policy)) |
| aviator_policy_pod_state | gauge | namespace, policy, pod, state | 1 per pod row of each policy's status (active, standby, ejected, unknown), read likewise |

Each is defined by its owner (the loop, the writer, `aviator.reconcilers.metrics`, this
module). Queue metrics (workqueue_*) come from aviator.workqueue.metrics on the same registry;
agent connection metrics from the stream receiver.

`exposition` renders them for a scrape without holding the event loop for the text:
the collectors run on the loop (they read the informer caches and the queues, which
only the loop touches), the text is formatted on a thread. At 5,000 policies a scrape
is about 65,000 series and 8 MB; formatting is most of its cost (about 0.5 s of CPU),
and on the loop it would hold back every report and reconcile for as long.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from aviator.reconcilers.metrics import PolicyMetrics
from aviator.runtime.loop import ReconcileMetrics
from aviator.runtime.writer import WriteMetrics


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.reconciles = ReconcileMetrics(r)
        self.writes = WriteMetrics(r)
        self.policies = PolicyMetrics(r)
        self.store_endpoints = Gauge(
            "aviator_latency_store_endpoints", "Endpoints in the latency store.", registry=r
        )
        self.store_buckets = Gauge(
            "aviator_latency_store_buckets",
            "Histogram buckets held by the latency store's deltas.",
            registry=r,
        )
        self.is_leader = Gauge("aviator_is_leader", "1 while this replica leads.", registry=r)
        self.shard_owned = Gauge(
            "aviator_shard_owned_policies",
            "Policies this replica owns and reconciles (sharding).",
            ["shard"],
            registry=r,
        )
        self.shard_handovers = Counter(
            "aviator_shard_handovers_total",
            "Policies this replica gained (in) or let go (out) (sharding).",
            ["shard", "direction"],
            registry=r,
        )
        self.stalled_enqueues = Counter(
            "aviator_stalled_pod_enqueues_total",
            "Policies enqueued at once because an agent reported a pod's request open "
            "longer than their p99Threshold.",
            registry=r,
        )

    def track_store_size(
        self, size: Callable[[], int], buckets: Callable[[], int] | None = None
    ) -> None:
        self.store_endpoints.set_function(lambda: float(size()))
        if buckets is not None:
            self.store_buckets.set_function(lambda: float(buckets()))

    def track_policies(self, policies: Callable[[], Iterable[dict[str, Any]]]) -> None:
        """Export the conditions of the policies `policies()` returns at each scrape."""
        self.registry.register(PolicyConditions(policies))


class PolicyConditions(Collector):
    """aviator_policy_condition, the way kube-state-metrics exports conditions: one
    series per condition with value 1, its status and reason as labels (the alerts on
    stale latency data and overload read the Degraded condition's reason from it); and
    aviator_policy_pod_state, each pod's state, for the dashboard."""

    def __init__(self, policies: Callable[[], Iterable[dict[str, Any]]]) -> None:
        self.policies = policies

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states = GaugeMetricFamily(
            "aviator_policy_pod_state",
            "State of each pod in each AviatorPolicy's status (1 per pod).",
            labels=["namespace", "policy", "pod", "state"],
        )
        family = GaugeMetricFamily(
            "aviator_policy_condition",
            "Conditions of each AviatorPolicy's status (1 per condition).",
            labels=["namespace", "policy", "type", "status", "reason"],
        )
        for policy in self.policies():
            meta = policy.get("metadata") or {}
            ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
            for row in (policy.get("status") or {}).get("pods") or []:
                if isinstance(row, dict) and row.get("name"):
                    states.add_metric([ns, name, str(row["name"]), str(row.get("state", ""))], 1.0)
            for c in (policy.get("status") or {}).get("conditions") or []:
                if not isinstance(c, dict):
                    continue
                family.add_metric(
                    [
                        ns,
                        name,
                        str(c.get("type", "")),
                        str(c.get("status", "")),
                        str(c.get("reason", "")),
                    ],
                    1.0,
                )
        yield family
        yield states


class _Collected:
    """Metric families already collected, in the shape `generate_latest` reads."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


async def exposition(registries: Iterable[CollectorRegistry]) -> bytes:
    """The text format of every metric of `registries`: collected here, on the event
    loop, and formatted on a thread (module docstring)."""
    families = [family for registry in registries for family in registry.collect()]
    return await asyncio.to_thread(generate_latest, _Collected(families))
