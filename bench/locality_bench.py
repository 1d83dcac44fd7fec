"""Latency-aware locality, in a cluster in a box of two zones (its own box: `--zones 2`,
box-node-1 in box-a, box-node-2 in box-b).

Two test-app pods per zone answer in 40 ms behind Service `web`, pinned to their
zone's node. The same pods are reached three ways, each by one open-loop client per
zone (a new connection per request: hints steer new connections) through the box proxy's zone addresses (which follow zone hints as kube-proxy on
a node of that zone does): (a) `web-aviator`, the shadow Service of an AviatorPolicy
with `topology.mode: latencyAware` (percentage 100, so every pod is routed and only
locality moves traffic; evaluationInterval 1 s, marginPercent 200, spillAfter 2,
returnAfter 2); (b) `web-close`, a Service with `trafficDistribution: PreferClose`
(kube-controller-manager's hints: every zone stays home, whatever its latency); (c)
`web`, no hints (every client over every pod). After a warm-up, zone A's pods turn
to 400 ms for 30 s (quick: 10 s), then back.

Rows: client p99 per zone and variant while both zones are fast and while A is slow
(from a second after the spill on; ratio: zone A's p99 against PreferClose's); seconds from A's pods
turning slow until A's clients are hinted onto B's pods (goal: 2 intervals + 1 s:
the agent's report interval and the look a quarter interval later fit in that
second and a quarter interval), and from their recovery until A is hinted home
again; slice writes while A spills (goal 0).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Sequence
from typing import Any

import uvloop

from aviator.kube import KubeClient
from aviator.kube.resources import AVIATORPOLICIES, ENDPOINTSLICES, PODS
from bench.common import (
    BoxHandle,
    OpenLoopClient,
    Row,
    Sample,
    box_unavailable,
    deployment,
    percentile,
    policy_body,
    row,
    service_manifest,
)
from bench.tail_latency_bench import wait_endpoints

NAME = "locality"
NS = "bench-locality"
ZONES = {"box-a": "box-node-1", "box-b": "box-node-2"}
VARIANTS = {"latencyAware": "web-aviator", "PreferClose": "web-close", "no hints": "web"}
INTERVAL_S = 1.0
SPILL_AFTER, RETURN_AFTER = 2, 2
# A base of a few ms would let a busy machine's scheduling delays alone triple a zone's
# p99 (the margin) for the two evaluations a spill takes.
BASE, SLOW = "40ms", "400ms"
MARGIN_PERCENT = 200
RATE_PER_S = 15.0


def run(quick: bool) -> list[Row]:
    reason = box_unavailable()
    if reason:
        return [row(NAME, "skipped", 0.0, "", note=reason)]
    box = BoxHandle(args=["--nodes", "2", "--zones", "2"]).start()
    try:
        return uvloop.run(_run(box, warm_s=4.0 if quick else 10.0, slow_s=10.0 if quick else 30.0))
    finally:
        box.stop()


def _manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for zone, node in ZONES.items():
        d = deployment(f"web-{zone}", {"app": "web", "zone": zone}, 2, BASE)
        d["spec"]["template"]["spec"]["nodeName"] = node
        docs.append(d)
    docs.append(service_manifest("web", {"app": "web"}))
    close = service_manifest("web-close", {"app": "web"})
    close["spec"]["trafficDistribution"] = "PreferClose"
    docs.append(close)
    return docs


async def _hinted(kube: KubeClient, zone: str) -> tuple[set[str], dict[str, str]]:
    """Pods of web-aviator hinted for `zone`, and each slice's resourceVersion."""
    answer = await kube.list(
        ENDPOINTSLICES, NS, params={"labelSelector": "kubernetes.io/service-name=web-aviator"}
    )
    pods: set[str] = set()
    versions: dict[str, str] = {}
    for s in answer.get("items") or []:
        versions[s["metadata"]["name"]] = s["metadata"]["resourceVersion"]
        for ep in s.get("endpoints") or []:
            zones = [z["name"] for z in (ep.get("hints") or {}).get("forZones") or []]
            if zone in zones:
                pods.add(ep["targetRef"]["name"])
    return pods, versions


async def _until(kube: KubeClient, zone: str, want: set[str], timeout_s: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if (await _hinted(kube, zone))[0] == want:
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    return None


async def _pods(kube: KubeClient, zone: str) -> set[str]:
    answer = await kube.list(PODS, NS, params={"labelSelector": f"app=web,zone={zone}"})
    return {p["metadata"]["name"] for p in answer.get("items") or []}


async def _run(box: BoxHandle, warm_s: float, slow_s: float) -> list[Row]:
    problem = await box.wait_aviator(120)
    if problem is not None:
        return [row(NAME, "not measured", 0.0, "", note=f"Aviator not runnable: {problem}")]
    kube = await KubeClient.load(str(box.kubeconfig))
    try:
        box.kubectl("create", "namespace", NS)
        docs = "\n---\n".join(json.dumps(d) for d in _manifests())
        box.kubectl("apply", "-n", NS, "-f", "-", input=docs)
        for zone in ZONES:
            box.kubectl(
                "wait", "-n", NS, "--for=condition=Available", f"deployment/web-{zone}",
                "--timeout=180s",
            )  # fmt: skip
        await wait_endpoints(kube, box, NS, "web", 4)
        topology = {
            "mode": "latencyAware",
            "marginPercent": MARGIN_PERCENT,
            "spillAfter": SPILL_AFTER,
            "returnAfter": RETURN_AFTER,
        }
        body = policy_body(
            "web",
            "web",
            evaluationInterval=f"{INTERVAL_S:g}s",
            selection={"mode": "percentage", "percentage": 100},
            topology=topology,
        )
        await kube.create(AVIATORPOLICIES, body, NS)
        await wait_endpoints(kube, box, NS, "web-aviator", 4)
        pods = {zone: await _pods(kube, zone) for zone in ZONES}
        for zone in ZONES:
            if await _until(kube, zone, pods[zone], 60) is None:
                return [row(NAME, "not measured", 0.0, "", note=f"{zone} never hinted home")]
        return await _episode(box, kube, pods, warm_s, slow_s)
    finally:
        for pod in await _pods(kube, "box-a"):
            box.set_pod_latency(NS, pod, None)
        await kube.close()
        box.kubectl("delete", "namespace", NS, "--wait=false")


def _address(box: BoxHandle, zone: str, service: str) -> tuple[str, int]:
    address = box.zone_address(zone, NS, service)
    if address is None:
        raise OSError(f"no {zone} address for {service} yet")
    return address


async def _episode(
    box: BoxHandle, kube: KubeClient, pods: dict[str, set[str]], warm_s: float, slow_s: float
) -> list[Row]:
    clients: dict[tuple[str, str], OpenLoopClient] = {}
    for variant, service in VARIANTS.items():
        for zone in ZONES:
            clients[(variant, zone)] = OpenLoopClient(
                functools.partial(_address, box, zone, service),
                RATE_PER_S,
                1,
                5.0,
                seed=len(clients) + 1,
            )
    # Long enough for warm-up, the slow episode and the return.
    total_s = warm_s + slow_s + 15.0
    t0 = time.monotonic()
    loads = [asyncio.create_task(c.run(total_s)) for c in clients.values()]
    await asyncio.sleep(warm_s)  # the warm-up is traffic at both zones' home pods
    for pod in pods["box-a"]:
        box.set_pod_latency(NS, pod, SLOW)
    onset = time.monotonic()
    spill_s = await _until(kube, "box-a", pods["box-b"], slow_s)
    # From a second after the spill: requests due before it may still be on A's pods.
    spilled_at = time.monotonic() + 1.0
    versions = (await _hinted(kube, "box-a"))[1]
    writes = 0
    while time.monotonic() < onset + slow_s:
        now = (await _hinted(kube, "box-a"))[1]
        writes += sum(1 for name, rv in now.items() if versions.get(name) != rv)
        versions = now
        await asyncio.sleep(0.1)
    for pod in pods["box-a"]:
        box.set_pod_latency(NS, pod, None)
    recovered = time.monotonic()
    return_s = await _until(kube, "box-a", pods["box-a"], 15.0)
    await asyncio.gather(*loads)
    for c in clients.values():
        await c.close()
    rows = _rows(clients, t0, onset, spilled_at, recovered, spill_s, return_s, writes)
    rows += _served_rows(clients, pods["box-a"], spilled_at, recovered)
    return rows


def _served_rows(
    clients: dict[tuple[str, str], OpenLoopClient],
    slow_pods: set[str],
    start: float,
    end: float,
) -> list[Row]:
    """Of zone A's requests while its pods are slow (from a second after the spill), the
    share A's own pods served: what the hints did, whatever the machine's load does to
    the latencies."""
    out: list[Row] = []
    for variant in VARIANTS:
        window = [s for s in clients[(variant, "box-a")].samples if start <= s.at < end]
        served = [s for s in window if s.served_by]
        share = 100.0 * sum(1 for s in served if s.served_by in slow_pods) / max(1, len(served))
        out.append(
            row(
                NAME,
                f"{variant}: box-a requests served by box-a's slow pods",
                share,
                "%",
                note=f"{len(served)} of {len(window)} requests named their pod",
            )
        )
    return out


def _p99(samples: Sequence[Sample], start: float, end: float) -> float:
    lat = [s.latency_s * 1000 for s in samples if start <= s.at < end]
    return percentile(lat, 0.99) if lat else float("nan")


def _rows(
    clients: dict[tuple[str, str], OpenLoopClient],
    t0: float,
    onset: float,
    spilled_at: float,
    recovered: float,
    spill_s: float | None,
    return_s: float | None,
    writes: int,
) -> list[Row]:
    rows: list[Row] = []
    note = f"open loop, {RATE_PER_S:g} req/s per client, a new connection per request"
    close_a = _p99(clients[("PreferClose", "box-a")].samples, spilled_at, recovered)
    for (variant, zone), client in clients.items():
        fast = _p99(client.samples, t0 + 1.0, onset)
        slow = _p99(client.samples, spilled_at, recovered)
        rows.append(row(NAME, f"{variant}: {zone} client p99, both zones fast", fast, "ms"))
        ratio = slow / close_a if zone == "box-a" and close_a > 0 else None
        rows.append(
            row(
                NAME,
                f"{variant}: {zone} client p99, box-a's pods at {SLOW}",
                slow,
                "ms",
                ratio=ratio,
                note=note + ("; ratio: to PreferClose's box-a p99" if ratio is not None else ""),
            )
        )
    budget = SPILL_AFTER * INTERVAL_S + 1.0
    rows.append(
        row(
            NAME,
            "box-a spills to box-b after its pods turn slow",
            float("nan") if spill_s is None else spill_s,
            "s",
            goal=f"<= {budget:g} s (spillAfter x interval + 1 s)",
        )
    )
    rows.append(
        row(
            NAME,
            "box-a hinted home again after its pods recover",
            float("nan") if return_s is None else return_s,
            "s",
            note="the latency window forgets the slow samples, then returnAfter evaluations",
        )
    )
    rows.append(row(NAME, "slice writes while box-a spills", float(writes), "writes", goal="0"))
    return rows
