"""The controller's Prometheus metrics, on one registry per process (tests use fresh ones).

| metric | type | labels | meaning |
|---|---|---|---|
| aviator_reconcile_duration_seconds | histogram | result | time per reconcile (ok, error) |
| aviator_reconcile_errors_total | counter | — | reconciles that failed and were retried |
| aviator_policy_active_pods | gauge | namespace, policy | pods serving |
| aviator_policy_total_pods | gauge | namespace, policy | eligible pods |
| aviator_policy_p99_latency_ms | gauge | namespace, policy | p99 of the active set (merged) |
| aviator_ejections_total | counter | namespace, policy | circuit-breaker ejections |
| aviator_api_writes_total | counter | kind, verb | writes made to the API server |
| aviator_latency_store_endpoints | gauge | — | endpoints held by the latency store |
| aviator_is_leader | gauge | — | 1 while this replica leads |

Queue metrics (workqueue_*) come from aviator.workqueue.metrics on the same registry;
agent connection metrics from the stream receiver.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.reconcile_duration = Histogram(
            "aviator_reconcile_duration_seconds",
            "Seconds one policy reconcile takes.",
            ["result"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.reconcile_errors = Counter(
            "aviator_reconcile_errors_total", "Reconciles that failed.", registry=r
        )
        pol = ["namespace", "policy"]
        self.active = Gauge("aviator_policy_active_pods", "Pods serving.", pol, registry=r)
        self.total = Gauge("aviator_policy_total_pods", "Eligible pods.", pol, registry=r)
        self.p99 = Gauge(
            "aviator_policy_p99_latency_ms", "p99 of the active set (ms).", pol, registry=r
        )
        self.ejections = Counter(
            "aviator_ejections_total", "Circuit-breaker ejections.", pol, registry=r
        )
        self.api_writes = Counter(
            "aviator_api_writes_total", "Writes to the API server.", ["kind", "verb"], registry=r
        )
        self.store_endpoints = Gauge(
            "aviator_latency_store_endpoints", "Endpoints in the latency store.", registry=r
        )
        self.is_leader = Gauge("aviator_is_leader", "1 while this replica leads.", registry=r)

    def api_write(self, kind: str, verb: str) -> None:
        self.api_writes.labels(kind=kind, verb=verb).inc()

    def track_store_size(self, size: Callable[[], int]) -> None:
        self.store_endpoints.set_function(lambda: float(size()))

    def forget_policy(self, namespace: str, policy: str) -> None:
        for gauge in (self.active, self.total, self.p99):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, policy)
