"""Per-policy gauges: set from each plan, the same values not set again, gone with the
policy."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from aviator.reconcilers.metrics import PolicyMetrics


def gauge(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value(name, {"namespace": "ns", "policy": "p"})


def test_gauges_follow_the_plans_and_leave_with_the_policy() -> None:
    registry = CollectorRegistry()
    metrics = PolicyMetrics(registry)
    metrics.set("ns", "p", 2, 4, None)
    assert gauge(registry, "aviator_policy_active_pods") == 2
    assert gauge(registry, "aviator_policy_p99_latency_ms") is None  # not known yet
    metrics.set("ns", "p", 2, 4, 12.5)
    metrics.set("ns", "p", 2, 4, 12.5)  # a settled reconcile: the same again
    assert gauge(registry, "aviator_policy_p99_latency_ms") == 12.5
    metrics.set("ns", "p", 3, 4, 12.5)
    assert gauge(registry, "aviator_policy_active_pods") == 3
    metrics.forget("ns", "p")
    assert gauge(registry, "aviator_policy_active_pods") is None
    # Back (the policy came back to this shard): the same values as before it left.
    metrics.set("ns", "p", 3, 4, 12.5)
    assert gauge(registry, "aviator_policy_active_pods") == 3
    assert gauge(registry, "aviator_policy_total_pods") == 4
    assert gauge(registry, "aviator_policy_p99_latency_ms") == 12.5
