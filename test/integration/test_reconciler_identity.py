"""A pod recreated under the same name (as a StatefulSet recreates its pods) is a new
pod: it does not inherit its predecessor's circuit-breaker ejection. Latency comes
through the real agent websocket."""

from __future__ import annotations

import pytest
from integration_support import (
    controller_and_agent,
    create_pod,
    create_policy,
    create_service,
    endpoint_pods,
    eventually,
    get_policy,
    slices_of,
)

from aviator.kube import KubeClient
from aviator.kube.resources import PODS
from aviator.testing.controlplane import ControlPlane

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("crd")]

LABELS = {"app": "db"}
IPS = {f"db-{i}": f"10.80.0.{i + 1}" for i in range(4)}
NEW_IP = "10.80.1.4"
SPEC = {
    "evaluationInterval": "300ms",
    "selection": {"mode": "percentage", "percentage": 100},
    "dampening": {"enabled": False},
    "circuitBreaker": {
        "enabled": True,
        "p99Threshold": "100ms",
        "consecutiveViolations": 1,
        "recoveryInterval": "1h",  # an inherited ejection would last the whole test
    },
}


async def test_a_recreated_pod_does_not_inherit_an_ejection(
    control_plane: ControlPlane, kube: KubeClient, namespace: str
) -> None:
    ns = namespace
    await create_service(kube, ns, "db", LABELS)
    for name, ip in IPS.items():
        await create_pod(kube, ns, name, ip, LABELS)
    async with controller_and_agent(control_plane, kube, ns) as (_, agent):
        agent.latency_ms = {ip: (500.0 if name == "db-3" else 10.0) for name, ip in IPS.items()}
        await create_policy(kube, ns, "p", "db", **SPEC)

        async def ejected() -> list[str] | None:
            status = ((await get_policy(kube, ns, "p")) or {}).get("status") or {}
            return status.get("ejectedPods") or None

        assert await eventually(ejected) == ["db-3"]
        old = await kube.get(PODS, "db-3", ns)

        # The StatefulSet controller replaces db-3: same name, new uid, new IP, healthy.
        await kube.delete(PODS, "db-3", ns, body={"gracePeriodSeconds": 0})
        agent.latency_ms = {
            **{ip: 10.0 for name, ip in IPS.items() if name != "db-3"},
            NEW_IP: 10.0,
        }
        new = await create_pod(kube, ns, "db-3", NEW_IP, LABELS)
        assert new["metadata"]["uid"] != old["metadata"]["uid"]

        async def serves_again() -> bool:
            status = ((await get_policy(kube, ns, "p")) or {}).get("status") or {}
            pods = endpoint_pods(await slices_of(kube, ns, "db-aviator", ours=True))
            return "db-3" in pods and not status.get("ejectedPods")

        await eventually(serves_again)
        (sl,) = await slices_of(kube, ns, "db-aviator", ours=True)
        (ep,) = [e for e in sl["endpoints"] if e["targetRef"]["name"] == "db-3"]
        assert ep["targetRef"]["uid"] == new["metadata"]["uid"] and ep["addresses"] == [NEW_IP]
