"""The cluster in a box itself: pods, their status and processes, the Service proxy.

These need no Aviator component; they prove the box is an honest stage for the
scenarios in test_e2e_scenarios.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from e2e_cluster import BoxCluster, Cluster
from e2e_scenario import TARGET, Scenario, deployed_quickstart, wait_for

from aviator.box.traffic import request_once
from aviator.kube.client import KubeClient
from aviator.kube.resources import PODS

pytestmark = pytest.mark.e2e


@pytest.fixture
async def apps(cluster: Cluster, kube: KubeClient, namespace: str) -> AsyncIterator[Scenario]:
    if not isinstance(cluster, BoxCluster):
        pytest.skip("tests of the box itself")
    async with deployed_quickstart(cluster, kube, namespace) as scenario:
        yield scenario


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_pods_run_as_processes_with_their_own_ip(apps: Scenario) -> None:
    answer = await apps.kube.list(PODS, apps.ns)
    pods = answer["items"]
    assert isinstance(apps.cluster, BoxCluster)
    pod_network = ipaddress.ip_network(apps.cluster.status()["pod_network"])
    assert len(pods) == 4
    ips = set()
    for pod in pods:
        status = pod["status"]
        assert status["phase"] == "Running"
        assert ipaddress.ip_address(status["podIP"]) in pod_network
        assert status["podIPs"] == [{"ip": status["podIP"]}]
        assert pod["spec"]["nodeName"].startswith("box-node-")
        (container,) = status["containerStatuses"]
        assert container["ready"] and "running" in container["state"]
        pid = int(container["containerID"].removeprefix("box://"))
        assert _alive(pid)
        ips.add(status["podIP"])
    assert len(ips) == 4
    nodes = {p["spec"]["nodeName"] for p in pods}
    assert len(nodes) == 2, "pods are spread round-robin over the box nodes"


async def test_proxy_spreads_connections_over_ready_endpoints(apps: Scenario) -> None:
    address = apps.cluster.address(apps.ns, TARGET)
    assert address is not None
    samples = await asyncio.gather(*(request_once(address) for _ in range(60)))
    assert all(s.ok for s in samples), [s.error for s in samples if not s.ok]
    served = Counter(s.served_by for s in samples)
    assert set(served) == await apps.pods("fast") | await apps.pods("slow")
    # 60 connections over 4 pods at random: each gets some (p of a miss < 1e-7).
    assert min(served.values()) >= 3


async def test_proxy_follows_slice_changes(apps: Scenario) -> None:
    fast = await apps.pods("fast")
    apps.kubectl("scale", "deployment/slow-app", "--replicas=0")
    _, _took = await wait_for(
        "the Service's slices to list only the fast pods",
        lambda: apps.routed(TARGET),
        lambda pods: pods == fast,
        timeout_s=30,
    )
    changed = time.monotonic()
    address = apps.cluster.address(apps.ns, TARGET)
    assert address is not None
    # Within about a second of the slice change, new connections reach only fast pods.
    late = []
    while time.monotonic() - changed < 1.5:
        sample = await request_once(address)
        if time.monotonic() - changed > 1.0:
            late.append(sample)
    late += await asyncio.gather(*(request_once(address) for _ in range(30)))
    assert {s.served_by for s in late} <= fast
    assert all(s.ok for s in late)


async def test_deleting_a_pod_stops_its_process(apps: Scenario) -> None:
    pod_name = sorted(await apps.pods("slow"))[0]
    pod = await apps.kube.get(PODS, pod_name, apps.ns)
    pid = int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("box://"))
    assert _alive(pid)
    apps.kubectl("delete", "pod", pod_name, "--wait=false")

    async def state() -> tuple[bool, bool]:
        names = {p["metadata"]["name"] for p in (await apps.kube.list(PODS, apps.ns))["items"]}
        return pod_name in names, _alive(pid)

    await wait_for(
        "the pod object and its process to be gone", state, lambda s: s == (False, False), 30
    )
    # The ReplicaSet replaces it, and the replacement runs.
    await apps.wait_ready_pods(fast=2, slow=2)


async def test_testapp_latency_can_be_changed_at_run_time(apps: Scenario) -> None:
    apps.kubectl("scale", "deployment/fast-app", "--replicas=1")
    apps.kubectl("scale", "deployment/slow-app", "--replicas=0")
    (pods, _) = await wait_for(
        "one fast pod to serve", lambda: apps.routed(TARGET), lambda p: len(p) == 1, 30
    )
    (pod_name,) = pods
    # The proxy follows the slices a moment later: until then a new connection may still
    # reach the slow pod, which still answers while it terminates.
    await wait_for(
        "the Service proxy to follow",
        lambda: _backends(apps, TARGET),
        lambda n: n in (None, 1),
        30,
    )
    address = apps.cluster.address(apps.ns, TARGET)
    assert address is not None
    apps.cluster.set_pod_latency(apps.ns, pod_name, "300ms")
    slow, _ = await wait_for(
        "the pod to turn slow",
        lambda: request_once(address),
        lambda s: s.ok and s.latency_s >= 0.3,
        10,
    )
    assert slow.served_by == pod_name
    apps.cluster.set_pod_latency(apps.ns, pod_name, None)
    fast, _ = await wait_for(
        "the pod to be fast again",
        lambda: request_once(address),
        lambda s: s.ok and s.latency_s < 0.2,
        10,
    )
    assert fast.served_by == pod_name


async def _backends(apps: Scenario, service: str) -> int | None:
    return apps.cluster.proxy_backends(apps.ns, service)


async def _address(apps: Scenario, service: str) -> tuple[str, int] | None:
    return apps.cluster.address(apps.ns, service)


async def test_service_without_ready_endpoints_refuses(apps: Scenario) -> None:
    apps.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "nobody", "namespace": apps.ns},
            "spec": {
                "selector": {"app": "nothing-matches"},
                "ports": [{"port": 80, "targetPort": 8080}],
            },
        }
    )
    (address, _) = await wait_for(
        "the box proxy to give the Service an address",
        lambda: _address(apps, "nobody"),
        lambda a: a is not None,
        10,
    )
    assert address is not None
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(*address)


async def test_pod_failing_readiness_gets_no_traffic(apps: Scenario) -> None:
    deployment = json.loads(apps.kubectl("get", "deployment/fast-app", "-o", "json"))
    deployment["metadata"] = {"name": "never-ready", "namespace": apps.ns}
    deployment.pop("status", None)
    template = deployment["spec"]["template"]
    labels = {"app": "my-app", "version": "never-ready"}
    deployment["spec"]["selector"] = {"matchLabels": labels}
    deployment["spec"]["replicas"] = 1
    template["metadata"]["labels"] = labels
    template["spec"]["containers"][0]["readinessProbe"] = {
        "tcpSocket": {"port": 9999},
        "periodSeconds": 1,
    }
    apps.apply(deployment)

    async def never_ready() -> dict[str, object] | None:
        items = (
            await apps.kube.list(PODS, apps.ns, params={"labelSelector": "version=never-ready"})
        )["items"]
        return items[0] if items and items[0].get("status", {}).get("podIP") else None

    pod, _ = await wait_for("the pod to run", never_ready, lambda p: p is not None, 30)
    assert pod is not None
    await asyncio.sleep(2.5)  # two probe periods: it must still not be Ready
    pod = await apps.kube.get(PODS, pod["metadata"]["name"], apps.ns)  # type: ignore[index]
    ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"
    assert pod["metadata"]["name"] not in await apps.routed(TARGET)


async def test_unknown_image_is_reported(
    cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    if not isinstance(cluster, BoxCluster):
        pytest.skip("tests of the box itself")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "nginx", "namespace": namespace},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
    }
    await kube.create(PODS, pod, namespace)

    async def status() -> dict[str, object]:
        got: dict[str, object] = (await kube.get(PODS, "nginx", namespace)).get("status", {})
        return got

    got, _ = await wait_for("the pod to fail", status, lambda s: s.get("phase") == "Failed", 30)
    assert got["reason"] == "UnsupportedImage"
    assert "nginx:1.27" in str(got["message"])
