"""Latency-aware locality end to end, in a box of two zones (`--zones 2`: box-node-1 in
box-a, box-node-2 in box-b): two pods of one Service in each zone, a policy with
`topology.mode: latencyAware`, and one client per zone through the box proxy's zone
addresses (which follow zone hints as kube-proxy does). Zone A's pods fast → A's
traffic stays in A; A's pods turned slow → A spills to B within spillAfter intervals +
1 s; no slice write while it spills; A's pods recover → A's traffic returns. The
client-side p99 per zone in each phase is printed as a benchmark row
(docs/benchmarks.md).

Hints steer new connections only: with the policy taking the Service over and
hand-off on, a keep-alive pool in zone A moves to B's pods when A spills (A's pods'
idle connections are ended), and loses no request."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from e2e_cluster import REPO, BoxCluster
from e2e_scenario import Scenario, wait_for

from aviator.box.traffic import Load
from aviator.kube.client import KubeClient
from aviator.kube.marks import SLICE_SELECTOR
from aviator.kube.resources import ENDPOINTSLICES, EVENTS, PODS
from aviator.testing.pool import KeepAlivePool

pytestmark = pytest.mark.e2e

SERVICE = "zoned-svc"
ZONES = {"box-a": "box-node-1", "box-b": "box-node-2"}
INTERVAL_S = 1.0
SPILL_AFTER, RETURN_AFTER = 2, 2
# Pods answer in BASE, a slow zone's in SLOW; a zone spills when its p99 is over three
# times the other's (MARGIN_PERCENT). A base of a few ms would let a busy machine's
# scheduling delays alone triple one zone's p99 for the two evaluations a spill takes.
BASE, SLOW = "40ms", "400ms"
MARGIN_PERCENT = 200
RATE_PER_S = 10.0  # the keep-alive pool's requests
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
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    container["env"] = [e for e in container["env"] if e["name"] != "LATENCY"]
    container["env"].append({"name": "LATENCY", "value": BASE})
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


async def slices(kube: KubeClient, ns: str, service: str = f"{SERVICE}-aviator") -> dict[str, Any]:
    """Aviator's EndpointSlices of `service` (the shadow Service unless told)."""
    selector = f"{SLICE_SELECTOR},kubernetes.io/service-name={service}"
    answer = await kube.list(ENDPOINTSLICES, ns, params={"labelSelector": selector})
    return {s["metadata"]["name"]: s for s in answer.get("items", [])}


def hinted_for(all_slices: dict[str, Any], zone: str) -> set[str]:
    return {
        ep["targetRef"]["name"]
        for s in all_slices.values()
        for ep in s.get("endpoints") or []
        if zone in [z["name"] for z in (ep.get("hints") or {}).get("forZones") or []]
    }


async def two_pods_per_zone(apps: Scenario) -> dict[str, list[str]]:
    """The Service and two ready test-app pods in each zone; their names per zone."""
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
            lambda z=zone: pods_of(apps.kube, apps.ns, z),
            lambda p: len(p) == 2,
            90,
        )
    return pods


def zoned_policy(apps: Scenario, **extra: Any) -> dict[str, Any]:
    """The latency-aware policy over every pod of the Service (percentage 100, no
    breaker: only locality moves traffic), with `extra` spec fields."""
    return apps.policy(
        "zoned",
        targetRef={"kind": "Service", "name": SERVICE},
        evaluationInterval=f"{INTERVAL_S:.0f}s",
        selection={"mode": "percentage", "percentage": 100},
        circuitBreaker={"enabled": False},
        topology={
            "mode": "latencyAware",
            "marginPercent": MARGIN_PERCENT,
            "spillAfter": SPILL_AFTER,
            "returnAfter": RETURN_AFTER,
        },
        **extra,
    )


async def test_a_slow_zone_spills_and_returns_without_flapping(
    zoned_box: BoxCluster, kube: KubeClient, namespace: str
) -> None:
    apps = Scenario(zoned_box, kube, namespace)
    pods = await two_pods_per_zone(apps)
    apps.apply(zoned_policy(apps))
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
        # The hints steer a zone's clients only once its proxy follows them (a busy
        # machine's proxy can lag the slices by seconds; a fresh run's did, at load 4).
        for zone in ZONES:
            await wait_for(
                f"{zone}'s clients to be spread over {zone}'s pods only",
                lambda z=zone: asyncio.to_thread(
                    zoned_box.zone_backend_count, z, namespace, f"{SERVICE}-aviator"
                ),
                lambda n, z=zone: n == len(pods[z]),
                30,
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
        # The budget (the agent's report interval, the look a quarter interval later that
        # starts the count, spillAfter - 1 intervals) is a speed goal: the locality
        # benchmark's row holds it to it on a quiet machine. Here it is a figure: on a
        # loaded machine the controller and the agent wait for a CPU as well.
        budget = SPILL_AFTER * INTERVAL_S + 1.0
        print(f"locality: box-a spilled {took:.2f}s after its pods turned slow (budget {budget}s)")
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
            zoned_box.set_pod_latency(namespace, pod, BASE)
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
        # The median, not the tail: on a loaded machine a fast pod's answer may wait for a
        # CPU as long as a slow one's (one run at load 5: p50 44 ms, p99 455 ms, every
        # request served by B); the tail is the benchmark row's, on a quiet machine.
        assert (spilling["box-a"].p50_ms or 0) < _ms(SLOW) / 2
    finally:
        for load in loads.values():
            await load.stop()


async def test_a_spilling_zone_hands_its_pooled_clients_off(
    zoned_box: BoxCluster, kube: KubeClient, namespace: str
) -> None:
    apps = Scenario(zoned_box, kube, namespace)
    pods = await two_pods_per_zone(apps)
    apps.apply(
        zoned_policy(
            apps, routing={"mode": "takeover", "handoff": {"enabled": True, "period": "2s"}}
        )
    )
    await wait_for(
        "each zone's pods hinted for their own zone only",
        lambda: slices(kube, namespace, SERVICE),
        lambda s: all(hinted_for(s, z) == set(pods[z]) for z in ZONES),
        60,
    )
    # The hints steer box-a's clients only once the proxy follows them and the Service's
    # built-in slices (no hints: every pod for every zone) are gone.
    await wait_for(
        "box-a's clients to be spread over box-a's pods only",
        lambda: asyncio.to_thread(zoned_box.zone_backend_count, "box-a", namespace, SERVICE),
        lambda n: n == len(pods["box-a"]),
        30,
    )
    address = zoned_box.zone_address("box-a", namespace, SERVICE)
    assert address is not None
    pool = await _pool_over(lambda: address, pods["box-a"])
    done = asyncio.Event()  # traffic runs until the checks are over (bounded: 180 s)
    # Hand-off ends idle connections only: at RATE_PER_S, even on A's slow pods, some
    # 4 of the 8 are busy at a time (a rate that kept all 8 busy would move nothing).
    traffic = asyncio.get_running_loop().create_task(pool.run(RATE_PER_S, 180.0, stop=done))
    try:
        for pod in pods["box-a"]:
            zoned_box.set_pod_latency(namespace, pod, SLOW)
        await wait_for(
            "box-a to spill to box-b",
            lambda: slices(kube, namespace, SERVICE),
            lambda s: hinted_for(s, "box-a") == set(pods["box-b"]),
            30,
        )

        async def handed_off() -> set[str]:
            answer = await kube.list(EVENTS, namespace)
            return {
                pod
                for e in answer.get("items", [])
                if e.get("reason") == "ConnectionsHandedOff"
                for pod in pods["box-a"]
                if pod in str(e.get("note"))
            }

        # The agent records the Event once a pod's idle connections are ended.
        await wait_for(
            "ConnectionsHandedOff for box-a's pods",
            handed_off,
            lambda done_pods: done_pods == set(pods["box-a"]),
            60,
        )
        settled = time.monotonic() + 1.0  # a request busy at the last look, then its answer

        async def answered_since() -> int:
            return sum(1 for s in pool.samples if s.at >= settled)

        await wait_for("30 requests after the hand-off", answered_since, lambda n: n >= 30, 60)
        after = [s for s in pool.samples if s.at >= settled]
        stayed = [s.served_by for s in after if s.served_by in pods["box-a"]]
        assert not stayed, f"{len(stayed)} of {len(after)} still served by box-a's pods"
    finally:
        done.set()
        await traffic
        await pool.close()
    failed = [s for s in pool.samples if not s.ok]
    assert not failed, f"{len(failed)} failed: {sorted({s.error or '?' for s in failed})}"
    print(f"locality hand-off: {pool.retries} retried, {pool.opened} connections opened")


async def _pool_over(address: Callable[[], tuple[str, int]], pods: list[str]) -> KeepAlivePool:
    """A keep-alive pool of 8 connections through `address` holding connections to each
    of `pods`. A burst of 8 requests opens the 8 (a pool opens connections as requests
    overlap, so steady light traffic alone may open two or three). The proxy picks a pod
    per connection at random, so 8 land on one of two pods once in 128: such a pool is
    closed and dialled anew, as a restarted client would."""
    for _ in range(5):
        # Generous: a request queued behind a slow pod (SLOW) must not time out.
        pool = KeepAlivePool(address, size=8, timeout_s=10.0)
        await asyncio.gather(*(pool.request() for _ in range(pool.size)))
        if set(pods) <= {s.served_by for s in pool.samples}:
            return pool
        await pool.close()
    raise AssertionError(f"5 pools of 8 connections never reached each of {pods}")


def _ms(duration: str) -> float:
    return float(duration.removesuffix("ms"))


async def _after(start: float, seconds: float) -> bool:
    return time.monotonic() - start >= seconds
