"""Per-policy metrics the policy reconciler sets from each plan.

| metric | type | labels | meaning |
|---|---|---|---|
| aviator_policy_active_pods | gauge | namespace, policy | pods serving |
| aviator_policy_total_pods | gauge | namespace, policy | eligible pods |
| aviator_policy_p99_latency_ms | gauge | namespace, policy | p99 of the active set (merged) |
| aviator_ejections_total | counter | namespace, policy | circuit-breaker ejections |
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge


class PolicyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        pol = ["namespace", "policy"]
        r = registry
        self.active = Gauge("aviator_policy_active_pods", "Pods serving.", pol, registry=r)
        self.total = Gauge("aviator_policy_total_pods", "Eligible pods.", pol, registry=r)
        self.p99 = Gauge(
            "aviator_policy_p99_latency_ms", "p99 of the active set (ms).", pol, registry=r
        )
        self.ejections = Counter(
            "aviator_ejections_total", "Circuit-breaker ejections.", pol, registry=r
        )
        # Each policy's active and total gauges, looked up once (every reconcile sets
        # them); its p99 is set only once known (no series says 0 ms before), then
        # looked up once too.
        self._gauges: dict[tuple[str, str], tuple[Gauge, Gauge]] = {}
        self._p99s: dict[tuple[str, str], Gauge] = {}
        # What each policy's gauges were last set to: a settled policy sets the same.
        self._values: dict[tuple[str, str], tuple[int, int, float | None]] = {}

    def set(
        self, namespace: str, policy: str, active: int, total: int, p99_ms: float | None
    ) -> None:
        key = (namespace, policy)
        values = (active, total, p99_ms)
        if self._values.get(key) == values:
            return
        self._values[key] = values
        gauges = self._gauges.get(key)
        if gauges is None:
            gauges = self._gauges[key] = (
                self.active.labels(namespace, policy),
                self.total.labels(namespace, policy),
            )
        gauges[0].set(active)
        gauges[1].set(total)
        if p99_ms is not None:
            p99 = self._p99s.get(key)
            if p99 is None:
                p99 = self._p99s[key] = self.p99.labels(namespace, policy)
            p99.set(p99_ms)

    def ejected(self, namespace: str, policy: str, count: int) -> None:
        if count:
            self.ejections.labels(namespace, policy).inc(count)

    def forget(self, namespace: str, policy: str) -> None:
        self._gauges.pop((namespace, policy), None)
        self._p99s.pop((namespace, policy), None)
        self._values.pop((namespace, policy), None)
        for gauge in (self.active, self.total, self.p99):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, policy)
