"""aviator_policy_condition: one series per condition of each cached policy."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest

from aviator.controller.metrics import ControllerMetrics


def test_conditions_exported_at_scrape_time() -> None:
    policies: list[dict[str, Any]] = []
    metrics = ControllerMetrics()
    metrics.track_policies(lambda: policies)
    assert b"aviator_policy_condition{" not in generate_latest(metrics.registry)
    policies.append(
        {
            "metadata": {"namespace": "shop", "name": "p"},
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "Routing"},
                    {"type": "Degraded", "status": "True", "reason": "NoLatencyData"},
                ],
                "pods": [
                    {"name": "web-1", "state": "active"},
                    {"name": "web-2", "state": "ejected"},
                ],
            },
        }
    )
    policies.append({"metadata": {"namespace": "shop", "name": "new"}})  # no status yet
    text = generate_latest(metrics.registry).decode()
    assert (
        'aviator_policy_condition{namespace="shop",policy="p",reason="Routing",'
        'status="True",type="Ready"} 1.0' in text
    )
    assert 'reason="NoLatencyData",status="True",type="Degraded"} 1.0' in text
    assert 'policy="new"' not in text
    assert (
        'aviator_policy_pod_state{namespace="shop",pod="web-2",policy="p",state="ejected"} 1.0'
        in text
    )
