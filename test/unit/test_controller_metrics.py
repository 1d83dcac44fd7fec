"""aviator_policy_condition: one series per condition of each cached policy."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest

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


def test_a_scrape_reads_the_caches_on_the_loop_and_formats_off_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The collectors read what only the event loop may touch (the policy cache); the
    text, most of a large scrape's cost, is formatted on another thread."""
    from aviator.controller import metrics as module

    threads: dict[str, int] = {}
    policies = [
        {
            "metadata": {"namespace": "shop", "name": f"p{i}"},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Routing"}]},
        }
        for i in range(3)
    ]

    def read_policies() -> list[dict[str, Any]]:
        threads["collect"] = threading.get_ident()
        return policies

    formatter = module.generate_latest

    def format_text(registry: Any) -> bytes:
        threads["format"] = threading.get_ident()
        return formatter(registry)

    monkeypatch.setattr(module, "generate_latest", format_text)
    metrics = ControllerMetrics()
    metrics.track_policies(read_policies)
    other = CollectorRegistry()
    Gauge("other_gauge", "A series of another registry.", registry=other).set(2)

    async def scrape() -> tuple[bytes, int]:
        return await module.exposition([metrics.registry, other]), threading.get_ident()

    body, loop_thread = asyncio.run(scrape())
    assert threads["collect"] == loop_thread
    assert threads["format"] != loop_thread
    # The same text as formatting each registry on the spot.
    assert body == formatter(metrics.registry) + formatter(other)
    assert body.count(b"aviator_policy_condition{") == 3
