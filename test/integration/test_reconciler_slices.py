"""Our slices against what the real kube-controller-manager writes: terminating pods
through a rollout and a Recreate Deployment (the test plays kubelet and scheduler),
topology hints (trafficDistribution, topology-mode Auto), hostnames of a headless
Service. The built-in slices of the same Service, written by the control plane's own
EndpointSlice controller, are the reference."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from integration_support import (
    condition,
    create_policy,
    create_service,
    ensure_node,
    eventually,
    get_policy,
    running_controller,
    set_pod_status,
    slices_of,
    watching,
)

from aviator.kube import KubeClient
from aviator.kube.marks import LABEL_MANAGED_BY, LABEL_SERVICE_NAME, LABEL_ZONE, MANAGER
from aviator.kube.resources import DEPLOYMENTS, ENDPOINTSLICES, NODES, PODS, SERVICES
from aviator.testing.controlplane import ControlPlane

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("crd")]

JSON = dict[str, Any]
LABELS = {"app": "web"}
NODE_A, NODE_B = "slices-node-a", "slices-node-b"
ALL_PODS = {"selection": {"mode": "percentage", "percentage": 100}}
SPEC = {"evaluationInterval": "500ms", "dampening": {"enabled": False}, **ALL_PODS}
# The fields kube-proxy (and DNS) read on an endpoint.
READ_BY_PROXY = ("addresses", "conditions", "hostname", "nodeName", "zone", "hints", "targetRef")


def by_pod(slices: list[JSON]) -> dict[str, JSON]:
    return {
        ep["targetRef"]["name"]: {k: ep.get(k) for k in READ_BY_PROXY}
        for s in slices
        for ep in s.get("endpoints") or []
    }


async def ready_node(kube: KubeClient, name: str, zone: str, cpu: str = "2") -> None:
    """A Node with a zone, allocatable CPU and Ready=True (what Auto hints count)."""
    with contextlib.suppress(Exception):
        await kube.create(
            NODES,
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {}}},
        )
    await kube.patch(NODES, name, {"metadata": {"labels": {LABEL_ZONE: zone}}})
    status = {
        "allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
        "capacity": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
    }
    await kube.patch(NODES, name, {"status": status}, subresource="status")


async def pod_on(kube: KubeClient, ns: str, name: str, ip: str, node: str, **spec: Any) -> None:
    await ensure_node(kube, node, "zone-b" if node == NODE_B else "zone-a")
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": LABELS},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": "example.invalid/app:1"}],
            **spec,
        },
    }
    await kube.create(PODS, body, ns)
    await set_pod_status(kube, ns, name, ip)


# --- hints and hostnames, compared with kube-controller-manager ------------------------


async def test_takeover_keeps_hints_and_hostnames_as_kubernetes_wrote_them(
    control_plane: ControlPlane, kube: KubeClient, namespace: str
) -> None:
    ns = namespace
    svc = await create_service(kube, ns, "db", LABELS)
    await kube.patch(SERVICES, "db", {"spec": {"trafficDistribution": "PreferClose"}}, ns)
    assert svc["spec"].get("clusterIP") != "None"
    for i, node in enumerate((NODE_A, NODE_B, NODE_B)):
        await pod_on(
            kube, ns, f"db-{i}", f"10.61.0.{i + 1}", node, hostname=f"db-{i}", subdomain="db"
        )

    async def builtin_complete() -> dict[str, JSON] | None:
        eps = by_pod(await slices_of(kube, ns, "db", ours=False))
        return eps if len(eps) == 3 and all(e["hints"] for e in eps.values()) else None

    kubernetes = await eventually(builtin_complete)
    assert kubernetes["db-0"]["hostname"] == "db-0"  # the reference has what we test
    async with running_controller(control_plane, ns):
        await create_policy(kube, ns, "p", "db", routing={"mode": "takeover"}, **SPEC)

        async def ours_complete() -> dict[str, JSON] | None:
            if await slices_of(kube, ns, "db", ours=False):
                return None
            eps = by_pod(await slices_of(kube, ns, "db", ours=True))
            return eps if len(eps) == 3 else None

        assert await eventually(ours_complete) == kubernetes


async def test_topology_mode_auto_allocates_as_kubernetes_does(
    control_plane: ControlPlane, kube: KubeClient, namespace: str
) -> None:
    ns = namespace
    await ready_node(kube, "auto-node-a", "auto-zone-a")
    await ready_node(kube, "auto-node-b", "auto-zone-b")
    await create_service(kube, ns, "web", LABELS)
    ann = {"metadata": {"annotations": {"service.kubernetes.io/topology-mode": "Auto"}}}
    await kube.patch(SERVICES, "web", ann, ns)
    nodes = ["auto-node-a"] * 3 + ["auto-node-b"]
    for i, node in enumerate(nodes):
        await pod_on(kube, ns, f"p{i}", f"10.62.0.{i + 1}", node)

    def hinted(eps: dict[str, JSON]) -> Counter[str] | None:
        if len(eps) != 4 or not all(e["hints"] for e in eps.values()):
            return None
        return Counter(e["hints"]["forZones"][0]["name"] for e in eps.values())

    async def builtin_hints() -> Counter[str] | None:
        return hinted(by_pod(await slices_of(kube, ns, "web", ours=False)))

    kubernetes = await eventually(builtin_hints)
    assert kubernetes == {"auto-zone-a": 2, "auto-zone-b": 2}  # equal CPU, equal shares
    async with running_controller(control_plane, ns):
        await create_policy(kube, ns, "p", "web", **SPEC)

        async def our_hints() -> Counter[str] | None:
            return hinted(by_pod(await slices_of(kube, ns, "web-aviator", ours=True)))

        assert await eventually(our_hints) == kubernetes


# --- terminating pods through rollouts (the test plays scheduler and kubelet) -----------


class Kubelet:
    """Binds the namespace's new pods to a node and reports them Ready at the next IP;
    finishes the deletion of terminating pods only when told to."""

    def __init__(self, kube: KubeClient, ns: str) -> None:
        self.kube, self.ns = kube, ns
        self.started: dict[str, str] = {}  # pod → IP
        self._next = 1

    async def start_new_pods(self) -> list[str]:
        pods = (await self.kube.list(PODS, self.ns)).get("items") or []
        new = []
        for pod in pods:
            name = pod["metadata"]["name"]
            if name in self.started or pod["metadata"].get("deletionTimestamp"):
                continue
            await ensure_node(self.kube, NODE_A)
            binding = {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": name},
                "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_A},
            }
            await self.kube.request("POST", PODS.path(self.ns, name, "binding"), body=binding)
            ip = f"10.63.0.{self._next}"
            self._next += 1
            await set_pod_status(self.kube, self.ns, name, ip)
            self.started[name] = ip
            new.append(name)
        return new

    async def finish_deletion(self, name: str) -> None:
        await self.kube.delete(PODS, name, self.ns, body={"gracePeriodSeconds": 0})


async def deployment(kube: KubeClient, ns: str, strategy: JSON) -> None:
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": LABELS},
            "strategy": strategy,
            "template": {
                "metadata": {"labels": LABELS},
                "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
            },
        },
    }
    await kube.create(DEPLOYMENTS, body, ns)


async def roll(kube: KubeClient, ns: str) -> None:
    patch = {"spec": {"template": {"metadata": {"annotations": {"rollout": "2"}}}}}
    await kube.patch(DEPLOYMENTS, "web", patch, ns)


@contextlib.asynccontextmanager
async def serving_history(kube: KubeClient, ns: str, svc: str) -> AsyncIterator[list[set[str]]]:
    """Every state our slices of `svc` pass through: the pods they say serve."""
    selector = f"{LABEL_SERVICE_NAME}={svc},{LABEL_MANAGED_BY}={MANAGER}"
    listed = await kube.list(ENDPOINTSLICES, ns, params={"labelSelector": selector})
    current = {s["metadata"]["name"]: s for s in listed.get("items") or []}
    history: list[set[str]] = []

    def record() -> None:
        history.append(
            {
                ep["targetRef"]["name"]
                for s in current.values()
                for ep in s.get("endpoints") or []
                if ep["conditions"].get("serving")
            }
        )

    record()

    async def watch() -> None:
        params = {
            "labelSelector": selector,
            "resourceVersion": listed["metadata"]["resourceVersion"],
        }
        async for ev in kube.watch(ENDPOINTSLICES.path(ns), params):
            name = ev["object"]["metadata"]["name"]
            if ev["type"] == "DELETED":
                current.pop(name, None)
            elif ev["type"] in ("ADDED", "MODIFIED"):
                current[name] = ev["object"]
            record()

    async with watching(watch()):
        yield history


def endpoints_say(kube: KubeClient, ns: str, want: dict[str, dict[str, bool]]) -> Callable[[], Any]:
    async def probe() -> bool:
        eps = by_pod(await slices_of(kube, ns, "web", ours=True))
        return {n: e["conditions"] for n, e in eps.items()} == want

    return probe


SERVING = {"ready": True, "serving": True, "terminating": False}
TERMINATING = {"ready": False, "serving": True, "terminating": True}


async def test_one_replica_rollout_keeps_the_service_served(
    control_plane: ControlPlane, kube: KubeClient, namespace: str
) -> None:
    ns = namespace
    kubelet = Kubelet(kube, ns)
    await create_service(kube, ns, "web", LABELS)
    # maxUnavailable 1: the old pod goes (terminating) before the new one is ready.
    await deployment(
        kube, ns, {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    )
    (old,) = await eventually(kubelet.start_new_pods)
    async with running_controller(control_plane, ns):
        await create_policy(kube, ns, "p", "web", routing={"mode": "takeover"}, **SPEC)
        await eventually(endpoints_say(kube, ns, {old: SERVING}))
        async with serving_history(kube, ns, "web") as history:
            await roll(kube, ns)
            await eventually(endpoints_say(kube, ns, {old: TERMINATING}))

            async def reported() -> bool:
                ready = condition(await get_policy(kube, ns, "p") or {}, "Ready")
                return "terminating" in ready.get("message", "")

            await eventually(reported)
            (new,) = await eventually(kubelet.start_new_pods)
            await eventually(endpoints_say(kube, ns, {new: SERVING}))
            await kubelet.finish_deletion(old)
            await eventually(lambda: _gone(kube, ns, old))
            await eventually(endpoints_say(kube, ns, {new: SERVING}))
        # The Service had a serving endpoint at every moment of the rollout.
        assert all(history), history
        assert {old} in history and {new} in history


async def test_recreate_deployment_serves_until_the_old_pod_stops(
    control_plane: ControlPlane, kube: KubeClient, namespace: str
) -> None:
    ns = namespace
    kubelet = Kubelet(kube, ns)
    await create_service(kube, ns, "web", LABELS)
    await deployment(kube, ns, {"type": "Recreate"})
    (old,) = await eventually(kubelet.start_new_pods)
    async with running_controller(control_plane, ns):
        await create_policy(kube, ns, "p", "web", routing={"mode": "takeover"}, **SPEC)
        await eventually(endpoints_say(kube, ns, {old: SERVING}))
        async with serving_history(kube, ns, "web") as history:
            await roll(kube, ns)
            # Recreate waits until the old pod is gone; while it shuts down it serves.
            await eventually(endpoints_say(kube, ns, {old: TERMINATING}))
            await kubelet.finish_deletion(old)
            (new,) = await eventually(kubelet.start_new_pods)
            await eventually(endpoints_say(kube, ns, {new: SERVING}))

            async def recorded() -> bool:  # the history's watch may trail that list
                return history[-1] == {new}

            await eventually(recorded)
        # Empty, if at all, only between the old pod's end and the new pod's start, when
        # nothing serves (as with the built-in slices); a reconcile that sees both changes
        # at once goes straight from the old pod to the new one.
        last_old = max(i for i, h in enumerate(history) if old in h)
        assert all(history[: last_old + 1]) and {old} in history, history
        assert history[-1] == {new}


async def _gone(kube: KubeClient, ns: str, pod: str) -> bool:
    try:
        await kube.get(PODS, pod, ns)
    except Exception:
        return True
    return False
