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
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass(slots=True)
class _Series:
    """One policy's gauges, looked up once (every reconcile sets them), and the values
    they were last set to (a settled policy sets the same again: nothing to do). Its
    p99 is set only once known, so no series says 0 ms before."""

    active: Gauge
    total: Gauge
    p99: Gauge | None = None
    values: tuple[int, int, float | None] | None = None


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
        self._series: dict[tuple[str, str], _Series] = {}

    def set(
        self, namespace: str, policy: str, active: int, total: int, p99_ms: float | None
    ) -> None:
        key = (namespace, policy)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(
                self.active.labels(namespace, policy), self.total.labels(namespace, policy)
            )
        values = (active, total, p99_ms)
        if series.values == values:
            return
        series.values = values
        series.active.set(active)
        series.total.set(total)
        if p99_ms is not None:
            if series.p99 is None:
                series.p99 = self.p99.labels(namespace, policy)
            series.p99.set(p99_ms)

    def ejected(self, namespace: str, policy: str, count: int) -> None:
        if count:
            self.ejections.labels(namespace, policy).inc(count)

    def forget(self, namespace: str, policy: str) -> None:
        self._series.pop((namespace, policy), None)
        for gauge in (self.active, self.total, self.p99):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, policy)
