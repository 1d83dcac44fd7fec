"""`kubectl aviator` run through kubectl itself (plugin discovery on PATH) against the
real control plane, with the controller in-process and latency streamed over the real
agent websocket: status, explain, latency, and restore of a taken-over Service after
the controller is gone."""

from __future__ import annotations

import pytest
from integration_support import (
    controller_and_agent,
    create_policy,
    create_service_and_pods,
    eventually,
    get_policy,
    kubectl_aviator,
)

from aviator.kube import KubeClient
from aviator.kube.marks import ANNOTATION_ORIGINAL_SELECTOR, ANNOTATION_TAKEN_OVER_BY
from aviator.kube.resources import AVIATORPOLICIES, SERVICES
from aviator.testing.controlplane import ControlPlane

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("crd")]

LABELS = {"app": "web"}
PODS = {"fast-1": "10.40.0.1", "fast-2": "10.40.0.2", "slow-1": "10.40.0.3", "slow-2": "10.40.0.4"}
SPEC = {
    "evaluationInterval": "300ms",
    "selection": {"mode": "topN", "topN": 2},
    "dampening": {"enabled": False},
    "circuitBreaker": {
        "enabled": True,
        "p99Threshold": "100ms",
        "consecutiveViolations": 1,
        "recoveryInterval": "1h",
    },
    "routing": {"mode": "takeover"},
}


def rows(output: str) -> dict[str, list[str]]:
    """A table's rows by their first cell (columns are 3+ spaces apart)."""
    import re

    out = {}
    for line in output.splitlines():
        cells = re.split(r"\s{3,}", line.strip())
        if len(cells) > 3:
            out[cells[0]] = cells
    return out


async def test_the_four_commands(
    control_plane: ControlPlane, kube: KubeClient, namespace: str
) -> None:
    ns = namespace
    await create_service_and_pods(kube, ns, "web", LABELS, PODS)
    async with controller_and_agent(control_plane, kube, ns) as (_, agent):
        agent.latency_ms = {ip: (500.0 if n.startswith("slow") else 10.0) for n, ip in PODS.items()}
        await create_policy(kube, ns, "p", "web", **SPEC)

        async def settled() -> bool:
            status = ((await get_policy(kube, ns, "p")) or {}).get("status") or {}
            ready = [c for c in status.get("conditions") or [] if c["type"] == "Ready"]
            taken = (status.get("takeover") or {}).get("phase") == "TakenOver"
            return bool(ready and ready[0]["status"] == "True" and taken) and sorted(
                status.get("ejectedPods") or []
            ) == ["slow-1", "slow-2"]

        await eventually(settled)

        status = await kubectl_aviator(control_plane, "status", "-n", ns)
        assert status.returncode == 0, status.stderr
        (row,) = [r for r in rows(status.stdout).values() if r[0] == ns]
        assert row[1:4] == ["p", "web", "web (takeover)"]
        assert row[4:6] == ["2", "4"] and row[8] == "True (Routing)"

        explain = await kubectl_aviator(control_plane, "explain", "p", "-n", ns)
        assert explain.returncode == 0, explain.stderr
        table = rows(explain.stdout)
        for pod in ("fast-1", "fast-2"):
            assert table[pod][2:4] == ["in", "active"], table[pod]
        for pod in ("slow-1", "slow-2"):
            assert table[pod][2:4] == ["out", "ejected"], table[pod]
            assert table[pod][8] == "open (ejection 1 in a row)"
        assert "topN: the 2 fastest" in explain.stdout

        latency = await kubectl_aviator(control_plane, "latency", "web", "-n", ns)
        assert latency.returncode == 0, latency.stderr
        table = rows(latency.stdout)
        assert float(table["fast-1"][5]) < 50 < float(table["slow-1"][5])  # p99 ms
        source = table["POD"].index("SOURCE")
        assert table["fast-1"][1] == PODS["fast-1"] and table["fast-1"][source] == "ebpf"

        # While the policy routes, restore refuses and says how to stop it instead.
        refused = await kubectl_aviator(control_plane, "restore", "web", "-n", ns)
        assert refused.returncode == 1 and f"kubectl delete avp p -n {ns}" in refused.stderr
        assert not (await kube.get(SERVICES, "web", ns))["spec"].get("selector")

    # The controller is gone (uninstalled before the policies): deleting the policy
    # hangs on its finalizer and the Service keeps no selector.
    await kube.delete(AVIATORPOLICIES, "p", ns)
    policy = await kube.get(AVIATORPOLICIES, "p", ns)
    assert policy["metadata"].get("deletionTimestamp")
    dry = await kubectl_aviator(control_plane, "restore", "web", "-n", ns, "--dry-run")
    assert dry.returncode == 0 and "(dry run)" in dry.stdout
    assert not (await kube.get(SERVICES, "web", ns))["spec"].get("selector")
    restored = await kubectl_aviator(control_plane, "restore", "web", "-n", ns)
    assert restored.returncode == 0, restored.stderr
    service = await kube.get(SERVICES, "web", ns)
    assert service["spec"]["selector"] == LABELS
    annotations = service["metadata"].get("annotations") or {}
    assert ANNOTATION_ORIGINAL_SELECTOR not in annotations
    assert ANNOTATION_TAKEN_OVER_BY not in annotations
    again = await kubectl_aviator(control_plane, "restore", "web", "-n", ns)
    assert again.returncode == 0 and "nothing to restore" in again.stdout
    await kube.patch(AVIATORPOLICIES, "p", {"metadata": {"finalizers": None}}, ns)


async def test_missing_policy_and_service(control_plane: ControlPlane, namespace: str) -> None:
    explain = await kubectl_aviator(control_plane, "explain", "nope", "-n", namespace)
    assert explain.returncode == 1 and "not found" in explain.stderr
    restore = await kubectl_aviator(control_plane, "restore", "nope", "-n", namespace)
    assert restore.returncode == 1 and "not found" in restore.stderr
    status = await kubectl_aviator(control_plane, "status", "-n", namespace)
    assert status.returncode == 0 and "No AviatorPolicies found." in status.stdout
