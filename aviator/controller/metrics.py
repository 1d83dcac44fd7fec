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
| aviator_is_leader | gauge | — | 1 while this replica leads |
| aviator_stalled_pod_enqueues_total | counter | — | policies enqueued at once because an agent reported a pod's request open past their p99Threshold |

Each is defined by its owner (the loop, the writer, `aviator.reconcilers.metrics`, this
module). Queue metrics (workqueue_*) come from aviator.workqueue.metrics on the same registry;
agent connection metrics from the stream receiver.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

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
