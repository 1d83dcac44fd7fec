"""Tail latency under a mixed fleet, in the cluster in a box.

8 pods answer in 10 ms and 2 in 500 ms (the test app), behind one Service. Clients
send open-loop load at a fixed rate (Poisson arrivals) through the box proxy, which
balances each new connection over the Service's ready endpoints like kube-proxy; each
connection carries a fixed number of requests, so new connections arrive at
rate / requests-per-connection. Latency counts from when a request was due.

Variants, one after the other against the same pods and the same proxy:
(a) no Aviator: the target Service, spread over all 10 pods;
(b) Aviator percentage 50, (c) Aviator topN 3, (d) Aviator prequal: the shadow
    Service of one AviatorPolicy (evaluationInterval 1 s, eBPF latency from the box
    agents), its selection mode patched between variants; each is measured once the
    shadow Service's slices hold no slow pod (and the proxy had a moment to follow);
(e) the oracle: a Service that selects only the fast pods.
Each p99 is given as a ratio to the oracle's and as the improvement over (a).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from aviator.kube import KubeClient
from aviator.kube.resources import AVIATORPOLICIES, ENDPOINTSLICES
from bench.common import (
    BoxHandle,
    OpenLoopClient,
    Row,
    Sample,
    deployment,
    in_shared_box,
    policy_body,
    quantiles,
    row,
    service_manifest,
)

NAME = "tail_latency"
NS = "bench-tail"
TARGET = "tail"
ORACLE = "tail-oracle"
SHADOW = f"{TARGET}-aviator"
GOAL_ORACLE = "<= 1.3 x oracle"
GOAL_GAIN = ">= 10 x better than (a)"


@dataclass(frozen=True)
class Load:
    rate_per_s: float
    requests_per_connection: int
    seconds: float

    def describe(self) -> str:
        return (
            f"{self.rate_per_s:g} req/s open loop for {self.seconds:g} s, "
            f"{self.requests_per_connection} requests per connection "
            f"({self.rate_per_s / self.requests_per_connection:g} new connections/s)"
        )


VARIANTS: list[tuple[str, dict[str, Any] | None]] = [
    ("(a) no Aviator", None),
    ("(b) percentage 50", {"mode": "percentage", "percentage": 50}),
    ("(c) topN 3", {"mode": "topN", "topN": 3}),
    ("(d) prequal", {"mode": "prequal"}),
    ("(e) oracle", None),
]


def run(quick: bool) -> list[Row]:
    # Quick: short connections, so the random proxy reaches the slow pods (0.8^50 to miss).
    load = Load(40, 4, 5) if quick else Load(80, 10, 60)
    return in_shared_box(NAME, NS, lambda box: _run(box, load))


async def _run(box: BoxHandle, load: Load) -> list[Row]:
    problem = await box.wait_aviator()
    kube = await KubeClient.load(str(box.kubeconfig))
    try:
        await setup_fleet(box, NS, fast=8, slow=2)
        box.kubectl(
            "apply",
            "-n",
            NS,
            "-f",
            "-",
            input=json.dumps(service_manifest(ORACLE, {"app": TARGET, "speed": "fast"})),
        )
        await wait_endpoints(kube, box, NS, TARGET, 10)
        await wait_endpoints(kube, box, NS, ORACLE, 8)
        results: dict[str, list[Sample]] = {}
        notes: dict[str, str] = {}
        results["(a) no Aviator"] = await measure(box, NS, TARGET, load)
        results["(e) oracle"] = await measure(box, NS, ORACLE, load)
        if problem is None:
            created = False
            for label, selection in VARIANTS:
                if selection is None:
                    continue
                # No dampening: a new mode applies at the next evaluation.
                spec = {
                    "evaluationInterval": "1s",
                    "selection": selection,
                    "dampening": {"enabled": False},
                }
                if not created:
                    await kube.create(AVIATORPOLICIES, policy_body(TARGET, TARGET, **spec), NS)
                    created = True
                else:
                    await kube.patch(
                        AVIATORPOLICIES,
                        TARGET,
                        {"spec": {"selection": selection}},
                        NS,
                        content_type="application/merge-patch+json",
                    )
                settled = await wait_fast_only(kube, NS, TARGET, SHADOW)
                notes[label] = settled
                results[label] = await measure(box, NS, SHADOW, load)
        return _rows(results, notes, load, problem)
    finally:
        await kube.close()


async def setup_fleet(box: BoxHandle, ns: str, fast: int, slow: int) -> None:
    """Deployments `fast` (10 ms) and `slow` (500 ms) behind Service `tail`."""
    box.kubectl("create", "namespace", ns)
    docs = [
        deployment("fast", {"app": TARGET, "speed": "fast"}, fast, "10ms"),
        deployment("slow", {"app": TARGET, "speed": "slow"}, slow, "500ms"),
        service_manifest(TARGET, {"app": TARGET}),
    ]
    box.kubectl("apply", "-n", ns, "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))
    box.kubectl(
        "wait",
        "-n",
        ns,
        "--for=condition=Available",
        "deployment/fast",
        "deployment/slow",
        "--timeout=180s",
    )


def ready_endpoints(slices: list[dict[str, Any]]) -> list[str]:
    out = []
    for s in slices:
        for ep in s.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready", True):
                out.append(str((ep.get("targetRef") or {}).get("name", "")))
    return sorted(out)


async def slice_pods(kube: KubeClient, ns: str, service: str) -> list[str]:
    answer = await kube.list(
        ENDPOINTSLICES, ns, params={"labelSelector": f"kubernetes.io/service-name={service}"}
    )
    return ready_endpoints(list(answer.get("items") or []))


async def wait_endpoints(
    kube: KubeClient,
    box: BoxHandle,
    ns: str,
    service: str,
    n: int,
    timeout_s: float = 120,
    *,
    kube_proxy: bool = False,
) -> None:
    """Until the Service's slices hold `n` pods and its proxy spreads new connections
    over them (it follows slices a moment later): the box proxy, or with `kube_proxy`
    kube-proxy's rules."""
    proxy = "kube-proxy" if kube_proxy else "the box proxy"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (
            len(await slice_pods(kube, ns, service)) >= n
            and box.backend_count(ns, service, kube_proxy=kube_proxy) >= n
        ):
            return
        await asyncio.sleep(0.25)
    raise RuntimeError(
        f"{ns}/{service}: fewer than {n} endpoints in the slices and {proxy} "
        f"(proxy: {box.backend_count(ns, service, kube_proxy=kube_proxy)}) after {timeout_s:.0f}s"
    )


async def wait_fast_only(
    kube: KubeClient, ns: str, policy: str, service: str, timeout_s: float = 90
) -> str:
    """Wait until the policy has evaluated its current spec and the service's slices hold
    exactly its active pods, none of them slow; returns a note."""
    start = time.monotonic()
    await asyncio.sleep(2.0)  # at least one evaluation of the new spec
    pods: list[str] = []
    while time.monotonic() - start < timeout_s:
        obj = await kube.get(AVIATORPOLICIES, policy, ns)
        status = obj.get("status") or {}
        current = status.get("observedGeneration") == obj["metadata"].get("generation")
        pods = await slice_pods(kube, ns, service)
        if (
            current
            and pods
            and len(pods) == status.get("activePods")
            and not any(p.startswith("slow-") for p in pods)
        ):
            await asyncio.sleep(1.5)  # the box proxy follows
            return f"{len(pods)} fast pods active after {time.monotonic() - start:.0f} s"
        await asyncio.sleep(0.5)
    return f"NOT settled in {timeout_s:.0f} s: active {pods}"


async def measure(box: BoxHandle, ns: str, service: str, load: Load) -> list[Sample]:
    """`load` from an open-loop client through the box proxy's address of `ns/service`."""
    address = await box.wait_address(ns, service)
    client = OpenLoopClient(
        lambda: address, load.rate_per_s, load.requests_per_connection, timeout_s=5.0
    )
    try:
        return await client.run(load.seconds)
    finally:
        await client.close()


def _rows(
    results: dict[str, list[Sample]], notes: dict[str, str], load: Load, problem: str | None
) -> list[Row]:
    figures: dict[str, tuple[float, float, float]] = {}
    for label, samples in results.items():
        lat = [s.latency_s * 1000 for s in samples]
        p50, p99, p999 = quantiles(lat, (0.5, 0.99, 0.999))
        figures[label] = (p50, p99, p999)
    oracle_p99 = figures["(e) oracle"][1]
    base_p99 = figures["(a) no Aviator"][1]
    rows: list[Row] = []
    for label, _ in VARIANTS:
        if label not in figures:
            rows.append(
                row(
                    NAME,
                    f"{label}: not measured",
                    0.0,
                    "",
                    note=f"Aviator not runnable in the box: {problem}",
                )
            )
            continue
        p50, p99, p999 = figures[label]
        samples = results[label]
        failed = sum(1 for s in samples if not s.ok)
        slow_share = sum(1 for s in samples if (s.served_by or "").startswith("slow-")) / max(
            1, len(samples)
        )
        aviator = label not in ("(a) no Aviator", "(e) oracle")
        note = (
            f"p50 {p50:.1f} ms, p99.9 {p999:.1f} ms; {len(samples)} requests, {failed} failed, "
            f"{slow_share:.1%} served by slow pods"
        )
        if label in notes:
            note += f"; {notes[label]}"
        if label == "(a) no Aviator":
            note += f"; load: {load.describe()}"
        rows.append(
            row(
                NAME,
                f"{label}: client p99",
                p99,
                "ms",
                ratio=p99 / oracle_p99 if oracle_p99 else None,
                goal=GOAL_ORACLE if aviator else None,
                note=note + " (ratio: to the oracle's p99)",
            )
        )
        if aviator:
            rows.append(
                row(
                    NAME,
                    f"{label}: p99 improvement over (a)",
                    base_p99 / p99 if p99 else 0.0,
                    "x",
                    ratio=base_p99 / p99 if p99 else None,
                    goal=GOAL_GAIN,
                )
            )
    return rows
