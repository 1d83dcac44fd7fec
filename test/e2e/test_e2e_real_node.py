"""One real node in the box (`aviator box up --real-node --proxy kube-proxy`): upstream
kubelet + containerd + runc + CNI bridge run pods from images built here (`make
images`), each pod in its own network namespace, Ready by a real readiness probe, and
the real kube-proxy routes a Service's ClusterIP to them.

Skips, saying why, where kubelet, kube-proxy, containerd or the images are missing
(`make node-components images`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from e2e_cluster import BoxCluster, node_unavailable, skip_if
from e2e_inbox import InBox, cluster_ip, served
from e2e_scenario import Scenario, wait_for

from aviator.box.netns import POD_NETWORKS
from aviator.box.realnode import REAL_NODE, mounts_under, pod_cidr
from aviator.kube.client import KubeClient
from aviator.kube.resources import CORE_EVENTS, PODS

pytestmark = pytest.mark.e2e
IMAGES = ("pause", "testapp")


@pytest.fixture(scope="module")
def real_box() -> Iterator[BoxCluster]:
    skip_if(node_unavailable(real_node=True, images=IMAGES))
    box = BoxCluster(
        args=["--proxy", "kube-proxy", "--real-node", "--no-aviator", "--nodes", "1"]
    ).start()
    try:
        yield box
    finally:
        box.stop()
    # Nothing the node mounted (rootfs, the pods' network namespaces) outlives the box.
    assert mounts_under(box.workdir) == [], "the stopped box left mounts behind"


@pytest.fixture(scope="module")
def api_server(real_box: BoxCluster) -> BoxCluster:
    """`kube` and `namespace` on this module's box."""
    return real_box


def deployment(name: str, replicas: int, ready_port: int = 8080) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeName": REAL_NODE,
                    "automountServiceAccountToken": False,
                    "containers": [
                        {
                            "name": "app",
                            "image": "aviator-testapp:latest",
                            "imagePullPolicy": "Never",
                            "env": [
                                {
                                    "name": "POD_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                },
                                {"name": "LATENCY", "value": "10ms"},
                            ],
                            "ports": [{"containerPort": 8080}],
                            "readinessProbe": {
                                "httpGet": {"path": "/healthz", "port": ready_port},
                                "periodSeconds": 1,
                            },
                        }
                    ],
                },
            },
        },
    }


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
        },
    }


@pytest.fixture
async def scenario(
    real_box: BoxCluster, kube: KubeClient, namespace: str
) -> AsyncIterator[Scenario]:
    s = Scenario(real_box, kube, namespace)
    try:
        yield s
    finally:
        await s.close()


async def ready_pods(kube: KubeClient, ns: str, app: str) -> dict[str, str]:
    answer = await kube.list(PODS, ns, params={"labelSelector": f"app={app}"})
    out = {}
    for pod in answer["items"]:
        conditions = pod.get("status", {}).get("conditions") or []
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            out[pod["metadata"]["name"]] = pod["status"]["podIP"]
    return out


async def test_real_node_runs_pods_behind_the_real_kube_proxy(
    scenario: Scenario, real_box: BoxCluster
) -> None:
    status = scenario.cluster.status(fresh=True)
    bridge = pod_cidr(POD_NETWORKS.index(ipaddress.IPv4Network(status["pod_network"])))
    scenario.apply(deployment("real-app", 2))
    scenario.apply(service("real-app"))
    pods, _ = await wait_for(
        "2 ready pods on the real node",
        lambda: ready_pods(scenario.kube, scenario.ns, "real-app"),
        lambda p: len(p) == 2,
        timeout_s=120,
    )
    # Their addresses come from the CNI bridge: each pod has a network namespace of its own,
    # mounted under the box's workdir (the machine's /run/netns kept every box's).
    assert all(ipaddress.ip_address(ip) in bridge for ip in pods.values())
    namespaces = [m for fs, m in mounts_under(real_box.workdir) if fs == "nsfs"]
    assert len(namespaces) >= len(pods), namespaces
    in_box = InBox(int(status["pid"]))
    try:
        address = await cluster_ip(scenario.kube, scenario.ns, "real-app")
        await wait_for(
            "the ClusterIP to reach both real pods",
            lambda: served(address, 30, in_box),
            lambda got: got == set(pods),
            timeout_s=30,
        )
        # A deleted pod's replacement takes its place behind the ClusterIP.
        gone = sorted(pods)[0]
        scenario.kubectl("delete", "pod", gone, "--wait=false")
        now, _ = await wait_for(
            "a replacement pod to be ready",
            lambda: ready_pods(scenario.kube, scenario.ns, "real-app"),
            lambda p: len(p) == 2 and gone not in p,
            timeout_s=120,
        )
        await wait_for(
            "the ClusterIP to reach the current pods only",
            lambda: served(address, 30, in_box),
            lambda got: got == set(now),
            timeout_s=30,
        )
    finally:
        in_box.close()


async def test_real_readiness_probe_keeps_a_failing_pod_out(scenario: Scenario) -> None:
    # Nothing listens on 9999: the kubelet's probe is refused (the test app answers any
    # path on its own port).
    scenario.apply(deployment("never-ready", 1, ready_port=9999))

    # Ready=False alone proves nothing: a pod is not Ready before its first probe either.
    # The kubelet's Unhealthy event is the evidence that a probe ran and failed.
    async def probe_failures() -> list[dict[str, Any]]:
        answer = await scenario.kube.list(
            CORE_EVENTS, scenario.ns, params={"fieldSelector": "reason=Unhealthy"}
        )
        return [
            e
            for e in answer["items"]
            if e["involvedObject"].get("name", "").startswith("never-ready-")
        ]

    failures, _ = await wait_for(
        "the kubelet to report a failed readiness probe",
        probe_failures,
        bool,
        timeout_s=120,
    )
    assert "Readiness probe failed" in failures[0].get("message", ""), failures[0]

    pod = await scenario.kube.get(PODS, failures[0]["involvedObject"]["name"], scenario.ns)
    status = pod["status"]
    assert status.get("phase") == "Running", status
    assert any(
        c["type"] == "Ready" and c["status"] == "False" for c in status.get("conditions", [])
    ), status
    # A failing readiness probe keeps the pod out; it does not restart the container.
    (container,) = status["containerStatuses"]
    assert "running" in container["state"] and container["restartCount"] == 0, container
