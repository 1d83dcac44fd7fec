"""Routing on the load pods report: queue depth, in the cluster in a box.

Four test-app pods in queue mode behind one Service: each serves at most SLOTS
requests at once (100 ms each) and queues the rest in arrival order, and exposes the
queue's length as a Prometheus gauge (`testapp_queue_length`) on its metrics port.
Three have 8 slots (80 requests/s each); one, `small`, has a quarter of that: 2 slots
(20 requests/s). Clients send open-loop load (Poisson arrivals) through the box proxy;
spread evenly, the small pod gets a quarter of it, more than it can serve, so its
queue, and its clients' waits, grow for as long as the load lasts.

Variants, one after the other against the same pods:
(a) round robin: the target Service, spread over all four pods (what kube-proxy does);
(b) prequal on the queue gauge: the shadow Service of an AviatorPolicy in prequal mode
    whose load is the pods' own gauge (`selection.prequal.load`: metric
    testapp_queue_length on the metrics port, combine replace; rifQuantile 0.75: a
    pod with a queue while the others have none is hot), the three fastest cold pods
    serving (percentage 75), evaluationInterval 1 s, dampening on (2 intervals).
Rows: each variant's client p99, the share of requests the small pod served, and the
ratio of (a)'s p99 to (b)'s (the goal: at least 3); the note of (b) carries the loads
the policy's status reported per pod.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aviator.kube import KubeClient
from aviator.kube.resources import AVIATORPOLICIES
from bench.common import (
    BoxHandle,
    Row,
    Sample,
    deployment,
    in_shared_box,
    policy_body,
    quantiles,
    row,
    service_manifest,
)
from bench.tail_latency_bench import Load, measure, wait_endpoints

NAME = "queue_depth"
NS = "bench-queue"
TARGET = "queue"
SHADOW = f"{TARGET}-aviator"
METRIC = "testapp_queue_length"
METRICS_PORT = 9090
SERVICE_TIME = "100ms"
BIG_SLOTS, SMALL_SLOTS = 8, 2
SMALL_CAPACITY = SMALL_SLOTS / (3 * BIG_SLOTS + SMALL_SLOTS)  # its share of what the pods serve
GOAL_RATIO = 3.0

LOAD_SPEC = {"metric": METRIC, "port": METRICS_PORT, "combine": "replace"}
POLICY_SPEC: dict[str, Any] = {
    "evaluationInterval": "1s",
    "selection": {
        "mode": "prequal",
        "percentage": 75,
        "prequal": {"rifQuantile": 0.75, "load": LOAD_SPEC},
    },
    "dampening": {"enabled": True, "consecutiveIntervals": 2},
}


def queue_deployment(name: str, replicas: int, slots: int) -> dict[str, Any]:
    """Test-app pods in queue mode: `slots` slots, the gauge on METRICS_PORT."""
    doc = deployment(name, {"app": TARGET, "size": name}, replicas, SERVICE_TIME)
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["env"] += [
        {"name": "SLOTS", "value": str(slots)},
        {"name": "METRICS_PORT", "value": str(METRICS_PORT)},
    ]
    container["ports"].append({"name": "metrics", "containerPort": METRICS_PORT})
    return doc


def run(quick: bool) -> list[Row]:
    # 100 requests/s: the small pod's quarter (25/s) is more than its 20/s; the three
    # others serve the whole of it at 42 % of their slots.
    load = Load(100, 10, 15) if quick else Load(100, 10, 60)
    return in_shared_box(NAME, NS, lambda box: _run(box, load))


async def _run(box: BoxHandle, load: Load) -> list[Row]:
    problem = await box.wait_aviator()
    kube = await KubeClient.load(str(box.kubeconfig))
    try:
        box.kubectl("create", "namespace", NS)
        docs = [
            queue_deployment("big", 3, BIG_SLOTS),
            queue_deployment("small", 1, SMALL_SLOTS),
            service_manifest(TARGET, {"app": TARGET}),
        ]
        box.kubectl("apply", "-n", NS, "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))
        box.kubectl(
            "wait",
            "-n",
            NS,
            "--for=condition=Available",
            "deployment/big",
            "deployment/small",
            "--timeout=180s",
        )
        await wait_endpoints(kube, box, NS, TARGET, 4)
        results: dict[str, list[Sample]] = {"(a) round robin": await measure(box, NS, TARGET, load)}
        notes: dict[str, str] = {}
        if problem is None:
            # The small pod's queue from (a) drains before (b) starts.
            await asyncio.sleep(load.seconds * 0.25 + 2)
            await kube.create(AVIATORPOLICIES, policy_body(TARGET, TARGET, **POLICY_SPEC), NS)
            notes["(b) prequal, queue gauge"] = await wait_loads(kube)
            await wait_endpoints(kube, box, NS, SHADOW, 3)
            label = "(b) prequal, queue gauge"
            results[label] = await measure(box, NS, SHADOW, load)
            notes[label] += "; during the run: " + await status_loads(kube)
        return _rows(results, notes, load, problem)
    finally:
        await kube.close()


async def status_loads(kube: KubeClient) -> str:
    """The load per pod in the policy's status rows: "pod=load(state)"."""
    obj = await kube.get(AVIATORPOLICIES, TARGET, NS)
    rows = (obj.get("status") or {}).get("pods") or []
    return ", ".join(
        f"{str(r.get('name', '?')).split('-')[0]}={r.get('load')}({r.get('state')})"
        for r in sorted(rows, key=lambda r: str(r.get("name")))
    )


async def wait_loads(kube: KubeClient, timeout_s: float = 60) -> str:
    """Until the policy's status shows a reported load for every pod; a note."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        obj = await kube.get(AVIATORPOLICIES, TARGET, NS)
        rows = (obj.get("status") or {}).get("pods") or []
        if len(rows) == 4 and all(r.get("load") is not None for r in rows):
            return f"loads in the status after {time.monotonic() - start:.0f} s"
        await asyncio.sleep(0.5)
    return f"NO load in the status after {timeout_s:.0f} s: {await status_loads(kube)}"


def small_share(samples: list[Sample]) -> float:
    return sum(1 for s in samples if (s.served_by or "").startswith("small-")) / max(
        1, len(samples)
    )


def _rows(
    results: dict[str, list[Sample]], notes: dict[str, str], load: Load, problem: str | None
) -> list[Row]:
    rows: list[Row] = []
    p99s: dict[str, float] = {}
    for label, samples in results.items():
        p50, p99 = quantiles([s.latency_s * 1000 for s in samples], (0.5, 0.99))
        p99s[label] = p99
        failed = sum(1 for s in samples if not s.ok)
        note = f"p50 {p50:.1f} ms; {len(samples)} requests, {failed} failed"
        if label in notes:
            note += f"; {notes[label]}"
        if label == "(a) round robin":
            note += (
                f"; load: {load.describe()}; 3 pods x {BIG_SLOTS} slots + 1 x {SMALL_SLOTS}, "
                f"{SERVICE_TIME} each"
            )
        rows.append(row(NAME, f"{label}: client p99", p99, "ms", note=note))
        rows.append(
            row(
                NAME,
                f"{label}: share served by the small pod",
                small_share(samples),
                "fraction",
                note=(
                    "a quarter when spread evenly; its capacity is "
                    f"{SMALL_CAPACITY:.3f} of the total"
                ),
            )
        )
    gauge = "(b) prequal, queue gauge"
    if gauge in p99s:
        ratio = p99s["(a) round robin"] / max(p99s[gauge], 1e-9)
        rows.append(
            row(
                NAME,
                "client p99: round robin / prequal on the queue gauge",
                ratio,
                "x",
                ratio=ratio,
                goal=f">= {GOAL_RATIO:g} x",
            )
        )
    else:
        rows.append(
            row(NAME, f"{gauge}: not measured", 0.0, "", note=f"Aviator not runnable: {problem}")
        )
    return rows
