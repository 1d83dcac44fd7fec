"""Informer figures: initial sync of many pods, steady-state events/s, ingest cost per core.

Three measurements:
- initial sync: a real kube-apiserver holds N pods (5,000; quick: 500); time from
  start() until the cache is synced and until a handler has received every initial add.
- steady state: M pod updates written at 64 in flight; events/s delivered to a handler
  (bounded by how fast the apiserver accepts writes, reported alongside).
- ingest: the same pipeline (watch-line JSON decoding → cache → handler) fed from
  memory on one core, against DESIGN §9's ≥ 50,000 pod updates/s ingested per core,
  on variants of a Pod's watch line captured from the real apiserver
  (bench.informer_ingest): CPU seconds of the process, so per core whatever the load.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
import uuid
from typing import Any

import uvloop

from aviator.informers import SharedIndexInformer
from aviator.informers.keys import JSON
from aviator.kube import KubeClient
from aviator.kube.podfields import CONTROLLER_POD
from aviator.kube.resources import PODS, SERVICEACCOUNTS
from aviator.testing.controlplane import ControlPlane
from bench import informer_ingest
from bench.common import bounded
from bench.informer_ingest import Counter

Row = dict[str, object]

GOAL_UPDATES_PER_S = 50_000.0  # DESIGN §9: pod updates ingested per core
IN_FLIGHT = 64


def pod(name: str, namespace: str, node: str = "node-1") -> JSON:
    """A pod shaped like a real one (labels, owner, container, status), ~2 KB of JSON."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": "checkout", "pod-template-hash": "5d9c7b8f6d", "tier": "web"},
            "annotations": {"aviator.example.com/weight": "100"},
        },
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "app",
                    "image": "registry.example/checkout:1.2.3",
                    "ports": [{"containerPort": 8080, "protocol": "TCP", "name": "http"}],
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
                }
            ],
            "terminationGracePeriodSeconds": 30,
        },
    }


async def against_apiserver(cp: ControlPlane, pods: int, updates: int) -> list[Row]:
    kube = await KubeClient.load(str(cp.kubeconfig))
    try:
        ns = f"bench-{uuid.uuid4().hex[:8]}"
        await kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})
        # No controller-manager here: make the ServiceAccount pods require ourselves.
        await kube.create(SERVICEACCOUNTS, {"metadata": {"name": "default"}}, ns)
        start = time.perf_counter()
        await bounded(
            [
                functools.partial(kube.create, PODS, pod(f"p-{i}", ns, f"node-{i % 50}"), ns)
                for i in range(pods)
            ],
            in_flight=IN_FLIGHT,
        )
        create_s = time.perf_counter() - start

        informer = SharedIndexInformer(kube, PODS, namespace=ns)
        counter = Counter()
        counter.expect(pods)
        registration = informer.add_event_handler(counter)
        assert registration is not None
        start = time.perf_counter()
        await informer.start()
        await informer.wait_for_sync()
        synced_s = time.perf_counter() - start
        await registration.wait_for_sync()
        # A list at resourceVersion "0" may lag the newest writes by a moment; the
        # watch then brings the rest. Count until the handler has every pod.
        await asyncio.wait_for(counter.reached.wait(), 120)
        delivered_s = counter.last_at - start

        counter.expect(pods + updates)
        names = [f"p-{i % pods}" for i in range(updates)]
        start = time.perf_counter()
        await bounded(
            [
                functools.partial(
                    kube.patch, PODS, n, {"metadata": {"annotations": {"bench/seq": str(i)}}}, ns
                )
                for i, n in enumerate(names)
            ],
            in_flight=IN_FLIGHT,
        )
        written_s = time.perf_counter() - start
        await asyncio.wait_for(counter.reached.wait(), 120)
        seen_s = counter.last_at - start
        await informer.stop()
    finally:
        await kube.close()
    return [
        row(
            "initial sync, list into cache",
            synced_s,
            "s",
            f"{pods} pods (created at {pods / create_s:.0f}/s)",
        ),
        row(
            "initial sync, handler saw all",
            delivered_s,
            "s",
            f"{pods} pods, {pods / delivered_s:.0f} pods/s",
        ),
        row(
            "steady-state events delivered",
            updates / seen_s,
            "events/s",
            f"{updates} pod updates; apiserver accepted writes at {updates / written_s:.0f}/s",
        ),
    ]


async def ingest_rows(line: bytes, pods: int, updates: int) -> list[Row]:
    lines = informer_ingest.pod_updates(line, pods, updates)
    size, managed = informer_ingest.sizes(line)
    shape = (
        f"{updates} watch events of {size} B (a Pod's status update captured from the "
        f"apiserver, {managed} B of it managedFields), {pods} pods, in "
        f"{informer_ingest.CHUNK // 1024} KiB chunks, one handler"
    )
    cases: list[tuple[str, dict[str, Any]]] = [
        ("decode the controller's Pod fields → cache → handler", {"projection": CONTROLLER_POD}),
        ("decode → cache → handler", {}),
        ("decode → cache → handler, managedFields kept", {"drop_managed_fields": False}),
        ("cache → handler, JSON pre-decoded", {"decoded": True}),
    ]
    rows = []
    for what, kwargs in cases:
        load = os.getloadavg()[0]
        per_cpu_s, per_wall_s = await informer_ingest.ingest(lines, **kwargs)
        out = row(
            f"ingest per core ({what})",
            per_cpu_s,
            "updates/s",
            f"{shape}; {per_wall_s:,.0f}/s of wall time at load average {load:.1f} "
            f"on {os.cpu_count()} CPUs",
        )
        out["goal"] = f">= {GOAL_UPDATES_PER_S:,.0f}"
        out["ratio"] = per_cpu_s / GOAL_UPDATES_PER_S
        rows.append(out)
    return rows


async def capture(cp: ControlPlane) -> bytes:
    async with await KubeClient.load(str(cp.kubeconfig)) as kube:
        return await informer_ingest.captured_pod_line(kube)


def row(metric: str, value: float, unit: str, note: str) -> Row:
    return {
        "benchmark": "informer",
        "metric": metric,
        "value": float(value),
        "unit": unit,
        "note": note,
    }


def run(quick: bool) -> list[dict[str, object]]:
    pods = 500 if quick else 5_000
    updates = 500 if quick else 10_000
    events = 20_000 if quick else 200_000
    with ControlPlane(controllers=False) as cp:
        line = uvloop.run(capture(cp))
        rows = uvloop.run(against_apiserver(cp, pods, updates))
    # In memory, with the control plane stopped: only the pipeline on the CPU.
    return uvloop.run(ingest_rows(line, min(5_000, events // 4), events)) + rows


if __name__ == "__main__":
    for r in run(quick=True):
        print(r)
