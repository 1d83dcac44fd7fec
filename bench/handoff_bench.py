"""Keep-alive pools and connection hand-off, in the cluster in a box.

8 pods answer in 10 ms and 2 in 500 ms behind one Service. A keep-alive pool client
(16 connections at most, reused most-recent first, a closed one re-dialled, one retry
of a request on a reused connection that failed before any response byte: what
urllib3 and Go do; aviator/testing/pool.py) sends open-loop load through the box
proxy, which picks a pod per new connection like kube-proxy. After a warm-up without
Aviator (the pool's connections spread over all ten pods), a takeover AviatorPolicy
(topN 8, evaluationInterval 1 s, dampening off) routes the Service to the fast pods.

Variants, same traffic, one after the other on the same pods, each with a fresh pool:
(a) routing.handoff off: the slices change, the pool's connections do not;
(b) routing.handoff on (period 2 s): the agents end the slow pods' idle connections
    and the pool re-dials through the proxy;
(o) the oracle: the same pool against a Service that selects only the fast pods.
Rows: each variant's client p99 over requests due from convergence (the slices hold
only fast pods) + 2 evaluation intervals + the hand-off period to the end, as a ratio
to the oracle's (goal with hand-off: <= 1.3); failed requests over the whole run
(goal: zero caused by hand-off), retries in the note.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import uvloop

from aviator.kube import KubeClient
from aviator.kube.resources import AVIATORPOLICIES, SERVICES
from aviator.testing.pool import KeepAlivePool, PoolSample
from bench.common import (
    BoxHandle,
    Row,
    box_unavailable,
    deployment,
    policy_body,
    quantiles,
    row,
    service_manifest,
    shared_box,
)
from bench.tail_latency_bench import slice_pods, wait_endpoints

NAME = "handoff"
NS = "bench-handoff"
TARGET = "ho"
ORACLE = "ho-oracle"
INTERVAL_S = 1.0
PERIOD_S = 2.0
POOL = 16
GOAL = "<= 1.3 x oracle"


@dataclass(frozen=True)
class Load:
    rate_per_s: float
    warmup_s: float
    after_s: float  # from the policy's creation to the end


def run(quick: bool) -> list[Row]:
    reason = box_unavailable()
    if reason:
        return [row(NAME, "skipped", 0.0, "", note=reason)]
    load = Load(60, 4, 16) if quick else Load(80, 10, 40)
    box = shared_box()
    try:
        return uvloop.run(_run(box, load))
    finally:
        box.kubectl("delete", "namespace", NS, "--wait=false")


async def _run(box: BoxHandle, load: Load) -> list[Row]:
    problem = await box.wait_aviator()
    if problem is not None:
        return [row(NAME, "skipped", 0.0, "", note=f"Aviator not runnable in the box: {problem}")]
    kube = await KubeClient.load(str(box.kubeconfig))
    try:
        box.kubectl("create", "namespace", NS)
        docs = [
            deployment("fast", {"app": TARGET, "speed": "fast"}, 8, "10ms"),
            deployment("slow", {"app": TARGET, "speed": "slow"}, 2, "500ms"),
            service_manifest(TARGET, {"app": TARGET}),
            service_manifest(ORACLE, {"app": TARGET, "speed": "fast"}),
        ]
        box.kubectl("apply", "-n", NS, "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))
        box.kubectl(
            "wait",
            "-n",
            NS,
            "--for=condition=Available",
            "deployment/fast",
            "deployment/slow",
            "--timeout=180s",
        )
        results = {}
        for label, enabled in (("(a) hand-off off", False), ("(b) hand-off on", True)):
            await wait_endpoints(kube, box, NS, TARGET, 10)
            results[label] = await _variant(box, kube, load, enabled)
        # The oracle last, on a box as warm as the variants had it.
        await wait_endpoints(kube, box, NS, ORACLE, 8)
        oracle_addr = await box.wait_address(NS, ORACLE)
        oracle = KeepAlivePool(lambda: oracle_addr, size=POOL)
        await oracle.run(load.rate_per_s, load.warmup_s)  # the pool fills
        oracle_samples = await oracle.run(load.rate_per_s, load.after_s, seed=2)
        await oracle.close()
        return _rows(oracle_samples, results, load)
    finally:
        await kube.close()


@dataclass
class Outcome:
    samples: list[PoolSample]
    window_from: float | None
    converged_after_s: float | None
    retries: int
    opened: int


async def _variant(box: BoxHandle, kube: KubeClient, load: Load, enabled: bool) -> Outcome:
    address = await box.wait_address(NS, TARGET)
    pool = KeepAlivePool(lambda: address, size=POOL)
    started = time.monotonic()
    traffic = asyncio.get_running_loop().create_task(
        pool.run(load.rate_per_s, load.warmup_s + load.after_s, seed=3)
    )
    await asyncio.sleep(load.warmup_s)
    created = time.monotonic()
    spec = {
        "evaluationInterval": f"{INTERVAL_S:g}s",
        "selection": {"mode": "topN", "topN": 8},
        "dampening": {"enabled": False},
        "routing": {
            "mode": "takeover",
            "handoff": {"enabled": enabled, "period": f"{PERIOD_S:g}s"},
        },
    }
    await kube.create(AVIATORPOLICIES, policy_body(TARGET, TARGET, **spec), NS)
    converged: float | None = None
    while not traffic.done():
        pods = await slice_pods(kube, NS, TARGET)
        if converged is None and len(pods) == 8 and not any(p.startswith("slow-") for p in pods):
            converged = time.monotonic()
        await asyncio.sleep(0.25)
    samples = await traffic
    await pool.close()
    await kube.delete(AVIATORPOLICIES, TARGET, NS)
    await _wait_restored(kube)
    window = None if converged is None else converged + 2 * INTERVAL_S + PERIOD_S
    return Outcome(
        [s for s in samples if s.at >= started],
        window,
        None if converged is None else converged - created,
        pool.retries,
        pool.opened,
    )


async def _wait_restored(kube: KubeClient, timeout_s: float = 60) -> None:
    """The finalizer restores the Service's selector; wait for it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        svc = await kube.get(SERVICES, TARGET, NS)
        if (svc.get("spec") or {}).get("selector"):
            return
        await asyncio.sleep(0.25)


def _p99(samples: list[PoolSample]) -> float:
    return quantiles([s.latency_s * 1000 for s in samples], (0.99,))[0] if samples else float("nan")


def _rows(oracle: list[PoolSample], results: dict[str, Outcome], load: Load) -> list[Row]:
    oracle_p99 = _p99(oracle)
    rows = [
        row(
            NAME,
            "(o) oracle: client p99",
            oracle_p99,
            "ms",
            note=f"pool of {POOL}, {load.rate_per_s:g} req/s open loop; "
            f"{sum(1 for s in oracle if not s.ok)} failed of {len(oracle)}",
        )
    ]
    for label, out in results.items():
        if out.window_from is None:
            rows.append(
                row(NAME, f"{label}: client p99", float("nan"), "ms", note="never converged")
            )
            continue
        window = [s for s in out.samples if s.at >= out.window_from]
        p99 = _p99(window)
        failed = [s for s in out.samples if not s.ok]
        slow = sum(1 for s in window if (s.served_by or "").startswith("slow-"))
        rows.append(
            row(
                NAME,
                f"{label}: client p99 after convergence",
                p99,
                "ms",
                ratio=p99 / oracle_p99 if oracle_p99 else None,
                goal=GOAL if "on" in label else None,
                note=f"from convergence ({out.converged_after_s:.1f} s after the policy) + "
                f"2 intervals + {PERIOD_S:g} s; {len(window)} requests, {slow} served by slow pods; "
                f"{out.retries} retried on a fresh connection, {out.opened} connections opened",
            )
        )
        rows.append(
            row(
                NAME,
                f"{label}: failed requests",
                float(len(failed)),
                "",
                goal="0" if "on" in label else None,
                note=f"of {len(out.samples)} over the whole run; errors: "
                + (", ".join(sorted({s.error or "?" for s in failed})) or "none"),
            )
        )
    return rows
