"""Latency-aware locality end to end, in a box of two zones (`--zones 2`: box-node-1 in
box-a, box-node-2 in box-b): two pods of one Service in each zone, a policy with
`topology.mode: latencyAware`, and one client per zone through the box proxy's zone
addresses (which follow zone hints as kube-proxy does). Zone A's pods fast → A's
traffic stays in A; A's pods turned slow → A spills to B within spillAfter intervals +
1 s; no slice write while it spills; A's pods
recover → A's traffic returns. The client-side p99 per zone in each phase is printed
as a benchmark row (docs/benchmarks.md)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from e2e_cluster import REPO, BoxCluster
from e2e_scenario import Scenario, wait_for

from aviator.box.traffic import Load
from aviator.kube.client import KubeClient
from aviator.kube.resources import ENDPOINTSLICES, PODS

pytestmark = pytest.mark.e2e

SERVICE = "zoned-svc"
ZONES = {"box-a": "box-node-1", "box-b": "box-node-2"}
INTERVAL_S = 1.0
SPILL_AFTER, RETURN_AFTER = 2, 2
SLOW = "150ms"
FUNCTIONAL = REPO / "test" / "functional"


@pytest.fixture(scope="module")
def zoned_box() -> Iterator[BoxCluster]:
    if os.geteuid() != 0:
        pytest.skip("the box needs root (it creates its own network namespace)")
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl"):
        if not (REPO / "bin" / name).exists():
            pytest.skip(f"bin/{name} is missing: run `make controlplane`")
    box = BoxCluster(args=["--nodes", "2", "--zones", "2"]).start()
    try:
        yield box
    finally:
        box.stop()


@pytest.fixture(scope="module")
def api_server(zoned_box: BoxCluster) -> BoxCluster:
    return zoned_box


def deployment(zone: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((FUNCTIONAL / "fast-app.yaml").read_text())
    labels = {"app": "zoned", "zone": zone}
    doc["metadata"] = {"name": f"app-{zone}", "labels": labels}
    doc["spec"]["selector"] = {"matchLabels": labels}
    doc["spec"]["template"]["metadata"]["labels"] = labels
    doc["spec"]["template"]["spec"]["nodeName"] = ZONES[zone]
    return doc


async def pods_of(kube: KubeClient, ns: str, zone: str) -> list[str]:
    answer = await kube.list(PODS, ns, params={"labelSelector": f"app=zoned,zone={zone}"})
    return sorted(
        p["metadata"]["name"]
        for p in answer.get("items", [])
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (p.get("status") or {}).get("conditions") or []
        )
    )


async def slices(kube: KubeClient, ns: str) -> dict[str, Any]:
    answer = await kube.list(ENDPOINTSLICES, ns)
    return {
        s["metadata"]["name"]: s
        for s in answer.get("items", [])
        if (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name")
        == f"{SERVICE}-aviator"
    }


def hinted_for(all_slices: dict[str, Any], zone: str) -> set[str]:
    return {
        ep["targetRef"]["name"]
        for s in all_slices.values()
        for ep in s.get("endpoints") or []
        if zone in [z["name"] for z in (ep.get("hints") or {}).get("forZones") or []]
    }


async def test_a_slow_zone_spills_and_returns_without_flapping(
    zoned_box: BoxCluster, kube: KubeClient, namespace: str
) -> None:
    apps = Scenario(zoned_box, kube, namespace)
    for zone in ZONES:
        apps.apply(deployment(zone))
    apps.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": SERVICE},
            "spec": {
                "selector": {"app": "zoned"},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
            },
        }
    )
    pods = {}
    for zone in ZONES:
        pods[zone], _ = await wait_for(
            f"2 ready pods in {zone}",
            lambda z=zone: pods_of(kube, namespace, z),
            lambda p: len(p) == 2,
            90,
        )
    apps.apply(
        apps.policy(
            "zoned",
            targetRef={"kind": "Service", "name": SERVICE},
            evaluationInterval=f"{INTERVAL_S:.0f}s",
            selection={"mode": "percentage", "percentage": 100},
            circuitBreaker={"enabled": False},
            topology={
                "mode": "latencyAware",
                "marginPercent": 100,
                "spillAfter": SPILL_AFTER,
                "returnAfter": RETURN_AFTER,
            },
        )
    )
    loads = {
        zone: Load(lambda z=zone: zoned_box.zone_address(z, namespace, f"{SERVICE}-aviator"), 2)
        for zone in ZONES
    }
    try:
        for load in loads.values():
            load.start()
        await wait_for(
            "each zone's pods hinted for their own zone only",
            lambda: slices(kube, namespace),
            lambda s: all(hinted_for(s, z) == set(pods[z]) for z in ZONES),
            60,
        )
        # Phase 1: both fast, each zone's traffic stays home.
        t = time.monotonic()
        await wait_for("3 s of local traffic", lambda: _after(t, 3.0), bool, 10)
        local = {z: loads[z].summary(since=t) for z in ZONES}
        for zone in ZONES:
            assert set(local[zone].by_pod) <= set(pods[zone]), (zone, local[zone].by_pod)

        # Phase 2: A's pods turn slow; A spills to B.
        for pod in pods["box-a"]:
            zoned_box.set_pod_latency(namespace, pod, SLOW)
        spilled, took = await wait_for(
            "box-a to spill to box-b",
            lambda: slices(kube, namespace),
            lambda s: hinted_for(s, "box-a") == set(pods["box-b"]),
            30,
            poll_s=0.05,
        )
        # At worst: the agent's report interval (1 s), the look halfway through an interval
        # that starts the count (aviator.reconcilers.cadence), spillAfter - 1 intervals.
        budget = SPILL_AFTER * INTERVAL_S + 1.0
        print(f"locality: box-a spilled {took:.2f}s after its pods turned slow (budget {budget}s)")
        assert took <= budget
        versions = {n: s["metadata"]["resourceVersion"] for n, s in spilled.items()}
        # Counted from a second on: the box proxy follows the slices within a moment,
        # and requests sent before may still complete on A's pods.
        t = time.monotonic() + 1.0
        await wait_for("4 s of spilled traffic", lambda: _after(t, 4.0), bool, 10)
        spilling = {z: loads[z].summary(since=t) for z in ZONES}
        assert set(spilling["box-a"].by_pod) <= set(pods["box-b"]), spilling["box-a"].by_pod
        now = await slices(kube, namespace)
        assert {n: s["metadata"]["resourceVersion"] for n, s in now.items()} == versions

        # Phase 3: A recovers; its traffic returns (after returnAfter evaluations).
        for pod in pods["box-a"]:
            zoned_box.set_pod_latency(namespace, pod, None)
        _, back = await wait_for(
            "box-a's traffic to return",
            lambda: slices(kube, namespace),
            lambda s: hinted_for(s, "box-a") == set(pods["box-a"]),
            60,
            poll_s=0.05,
        )
        print(f"locality: box-a returned {back:.2f}s after its pods recovered")
        t = time.monotonic() + 1.0  # as above
        await wait_for("3 s of local traffic again", lambda: _after(t, 3.0), bool, 10)
        again = {z: loads[z].summary(since=t) for z in ZONES}
        assert set(again["box-a"].by_pod) <= set(pods["box-a"]), again["box-a"].by_pod
        policy = await apps.avp("zoned")
        assert policy is not None
        rows = {r["zone"]: r["state"] for r in policy["status"]["zones"]}
        assert rows == {"box-a": "local", "box-b": "local"}
        for phase, summary in (("local", local), ("A slow, spilled", spilling), ("A back", again)):
            cells = "  ".join(f"{z}: {summary[z].p99_ms:.1f} ms p99" for z in ZONES)
            print(f"locality bench | {phase} | {cells}")
        # A spilled serves A's clients from B's fast pods: far below the slow pods' latency.
        assert (spilling["box-a"].p99_ms or 0) < 100
    finally:
        for load in loads.values():
            await load.stop()


async def _after(start: float, seconds: float) -> bool:
    return time.monotonic() - start >= seconds
