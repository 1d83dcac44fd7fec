"""A policy says which of its pods cannot be measured because their node's agent has
full BPF maps (the agent's snapshots name them: `maps_full`), through the real
receiver, controller and API server."""

from __future__ import annotations

from typing import Any

import pytest
from integration_support import (
    condition,
    controller_and_agent,
    create_policy,
    create_service_and_pods,
    eventually,
    get_policy,
)

from aviator.kube import KubeClient
from aviator.testing.controlplane import ControlPlane

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("crd")]

LABELS = {"app": "web"}
IPS = {"web-0": "10.61.0.1", "web-1": "10.61.0.2"}


async def test_pods_a_full_map_cannot_hold_are_named_in_the_degraded_condition(
    control_plane: ControlPlane, kube: KubeClient, namespace: str
) -> None:
    ns = namespace
    await create_service_and_pods(kube, ns, "web", LABELS, IPS)
    async with controller_and_agent(control_plane, kube, ns) as (_, agent):
        agent.latency_ms = {IPS["web-0"]: 5.0}  # web-1 has no entry: the map is full
        agent.maps_full = ("endpoints",)
        await create_policy(kube, ns, "p", "web", evaluationInterval="500ms")

        async def degraded(reason: str) -> dict[str, Any] | None:
            c = condition(await get_policy(kube, ns, "p") or {}, "Degraded")
            return c if c.get("status") == "True" and c.get("reason") == reason else None

        c = await eventually(lambda: degraded("AgentMapsFull"))
        assert "1 pods (web-1) cannot be measured" in c["message"]
        assert "endpoints" in c["message"] and "--max-endpoints" in c["message"]

        # The agent's map has room again: the condition goes once its reports say so.
        agent.maps_full = ()

        async def clear() -> bool:
            c = condition(await get_policy(kube, ns, "p") or {}, "Degraded")
            return c.get("status") == "False"

        await eventually(clear)
