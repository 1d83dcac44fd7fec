"""Sharded controllers: 1, 2 and 4 `aviator controller --sharding` processes on the same
fleet against a real API server, then one of them killed.

The fleet: 600 policies over 2 pods each (quick: 24 policies over 4 pods), headless
Services, evaluationInterval 1 s; no agents (every pod's latency is unknown, which
changes nothing the shards decide: the reconciles still run every interval). The ring
splits policies evenly only in the mean: a shard's share varies by about
√(P (N-1)) / N policies, so with 200 policies over 4 shards the busiest holds more than
1.2 times its share in about one run in six; with 600, in about one in a hundred. Per
shard count:

- work per shard: the reconciles each process ran (its own
  `aviator_reconcile_duration_seconds` count) per second over a steady window (from
  the first 3 s without writes to slices, Services or policies), the busiest shard
  against the single shard's / N (goal: within 20 %), and its CPU (which also holds what every replica does whatever
  it owns: informers of every object). Reconcile wall time is no measure here: with
  more processes than cores, each reconcile waits longer for a CPU;
- the policies each shard owns (its `aviator_shard_owned_policies`).

Then, with the shards of the last round still running, one of them is killed
(SIGKILL): the time until every one of its policies carries another shard's marker
(goal: LeaseDuration + RetryPeriod), and the EndpointSlice writes the move caused
(goal: none).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import uvloop

from aviator.kube import KubeClient
from aviator.kube.resources import AVIATORPOLICIES, ENDPOINTSLICES, SERVICES
from aviator.sharding.claims import holder, marker_of
from bench.common import (
    ControllerProcess,
    CpuMeter,
    Row,
    WriteWatch,
    bounded,
    create_ready_pods,
    create_service,
    metric_sum,
    new_namespace,
    pod_ip,
    policy_body,
    row,
    start_control_plane,
)

NAME = "shards"
# The controller's defaults: a busy replica's event loop (a large list, many reconciles
# at once on a loaded machine) can stall for seconds, and shorter deadlines then cost
# member Leases, which would be measured instead of the split.
LEASE_S, RENEW_S, RETRY_S = 15.0, 10.0, 2.0
SHARDS = (1, 2, 4)
GOAL_SPLIT = "busiest shard <= 1.2 x (1 shard's work / N)"
GOAL_FAILOVER = f"<= LeaseDuration + RetryPeriod ({LEASE_S + RETRY_S:g} s)"


@dataclass(frozen=True)
class Sizes:
    policies: int
    pods_per_policy: int
    steady_s: float


def run(quick: bool) -> list[Row]:
    sizes = Sizes(24, 4, 5.0) if quick else Sizes(600, 2, 30.0)
    cp = start_control_plane()
    try:
        return uvloop.run(_run(cp.kubeconfig, sizes))
    finally:
        cp.stop()


async def _run(kubeconfig: Path, sizes: Sizes) -> list[Row]:
    kube = await KubeClient.load(str(kubeconfig))
    try:
        ns = await new_namespace(kube, "shards")
        per = sizes.pods_per_policy
        for j in range(sizes.policies):
            await create_service(kube, ns, f"svc-{j}", {"app": f"svc-{j}"}, headless=True)
        await bounded(
            [
                functools.partial(
                    create_ready_pods,
                    kube,
                    ns,
                    [(f"p-{j}-{k}", pod_ip(j * per + k)) for k in range(per)],
                    {"app": f"svc-{j}"},
                )
                for j in range(sizes.policies)
            ],
            in_flight=8,
        )
        for j in range(sizes.policies):
            body = policy_body(f"pol-{j}", f"svc-{j}", evaluationInterval="1s")
            await kube.create(AVIATORPOLICIES, body, ns)
        rows: list[Row] = []
        single: tuple[float, float] | None = None
        for n in SHARDS:
            names = [f"shard-{n}-{i}" for i in range(n)]
            shards = [_shard(kubeconfig, ns, ident) for ident in names]
            try:
                await asyncio.gather(*(s.wait_ready() for s in shards))
                await _settled(kube, ns, set(names), sizes.policies)
                await _quiet(kube, ns)
                work = await _steady(shards, sizes.steady_s)
                single = single if single is not None else (work[0][0], work[0][1])
                rows += _split_rows(n, work, *single)
                if n == SHARDS[-1]:
                    rows.append(await _failover(kube, ns, shards[-1], names[-1], sizes.policies, n))
            finally:
                for s in shards:
                    s.stop()
        return rows
    finally:
        await kube.close()


def _shard(kubeconfig: Path, ns: str, ident: str) -> ControllerProcess:
    return ControllerProcess(
        kubeconfig,
        ns,
        extra=(
            "--sharding",
            f"--id={ident}",
            f"--lease-duration={LEASE_S}",
            f"--renew-deadline={RENEW_S}",
            f"--retry-period={RETRY_S}",
        ),
    )


async def _holders(kube: KubeClient, ns: str) -> dict[str, str]:
    items = (await kube.list(AVIATORPOLICIES, ns)).get("items") or []
    return {p["metadata"]["name"]: holder(marker_of(p)) for p in items}


async def _settled(kube: KubeClient, ns: str, members: set[str], policies: int) -> None:
    """Until every policy carries the marker of one of `members` (bounded)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        held = await _holders(kube, ns)
        if len(held) == policies and set(held.values()) <= members:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"policies not claimed by {sorted(members)} within 120 s")


async def _quiet(kube: KubeClient, ns: str, span_s: float = 3.0, timeout_s: float = 120) -> None:
    """Until a span passes without writes to slices, Services or policies: the first
    reconciles (and, after a move, the new owners' first look) have played out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        watch = await WriteWatch(kube, ns, [ENDPOINTSLICES, SERVICES, AVIATORPOLICIES]).start()
        await asyncio.sleep(span_s)
        await watch.stop()
        if watch.total() == 0:
            return


async def _steady(
    shards: list[ControllerProcess], seconds: float
) -> list[tuple[float, float, float, float]]:
    """Per shard over the window: (reconciles, CPU seconds, policies owned,
    hand-overs in either direction: none in a steady window)."""
    before = [await s.metrics() for s in shards]
    meters = [CpuMeter(s.pid).start() for s in shards]
    await asyncio.sleep(seconds)
    after = [await s.metrics() for s in shards]
    out = []
    for b, a, m in zip(before, after, meters, strict=True):
        busy = metric_sum(a, "aviator_reconcile_duration_seconds_count") - metric_sum(
            b, "aviator_reconcile_duration_seconds_count"
        )
        cpu_s, wall_s = m.read()
        owned = metric_sum(a, "aviator_shard_owned_policies")
        moves = metric_sum(a, "aviator_shard_handovers_total") - metric_sum(
            b, "aviator_shard_handovers_total"
        )
        out.append((busy / wall_s, cpu_s / wall_s, owned, moves))
    return out


def _split_rows(
    n: int, work: list[tuple[float, float, float, float]], single: float, single_cpu_cores: float
) -> list[Row]:
    busiest = max(w for w, _, _, _ in work)
    share = single / n
    owned = "/".join(f"{o:.0f}" for _, _, o, _ in work)
    moves = sum(m for _, _, _, m in work)
    load = f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    single_cpu = f"; 1 shard: {single_cpu_cores:.3f} cores" if single_cpu_cores else ""
    return [
        row(
            NAME,
            f"{n} shards: reconciles of the busiest shard",
            busiest,
            "/s",
            ratio=busiest / share if share else 0.0,
            goal=GOAL_SPLIT,
            note=f"policies owned {owned}; hand-overs in the window {moves:.0f}; "
            f"1 shard: {single:.0f}/s",
        ),
        row(
            NAME,
            f"{n} shards: CPU of the busiest shard",
            max(c for _, c, _, _ in work),
            "cores",
            note="its reconciles and what every replica does whatever it owns (informers "
            f"of every object){single_cpu}; {load}",
        ),
    ]


async def _failover(
    kube: KubeClient, ns: str, victim: ControllerProcess, name: str, policies: int, n: int
) -> Row:
    before = await _holders(kube, ns)
    theirs = {p for p, h in before.items() if h == name}
    slices = await WriteWatch(kube, ns, [ENDPOINTSLICES]).start()
    try:
        killed = time.monotonic()
        victim.process.send_signal(signal.SIGKILL)
        deadline = killed + 120
        while time.monotonic() < deadline:
            held = await _holders(kube, ns)
            if all(held.get(p) not in ("", name) for p in theirs):
                break
            await asyncio.sleep(0.05)
        took = time.monotonic() - killed
        await asyncio.sleep(2.0)  # the new owners' first reconciles of those policies
    finally:
        await slices.stop()
    return row(
        NAME,
        f"{n} shards, one killed: its policies moved",
        took,
        "s",
        ratio=took / (LEASE_S + RETRY_S),
        goal=GOAL_FAILOVER,
        note=f"{len(theirs)} of {policies} policies; EndpointSlice writes caused by the "
        f"move: {slices.total()} (goal 0)",
    )
