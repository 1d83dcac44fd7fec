"""Reaction time, in the cluster in a box: one of 10 pods turns slow, then recovers.

Ten test-app pods answer in 10 ms behind Service `web`. One AviatorPolicy routes the
shadow Service `web-aviator`: percentage 100 (every healthy pod serves), circuit
breaker on (p99Threshold 500 ms, 2 consecutive violations, recoveryInterval 10 s; quick:
3 s), evaluationInterval 1 s, dampening at its defaults. Two open-loop clients run at
once, at the same rate, with a 1 s time-out: one calls `web-aviator`, the other `web`
(round robin over all pods, the comparison in the same run). After a warm-up one pod
turns to 2 s per request (the test app's control file) for 60 s (quick: 12 s), then
back to 10 ms.

Figures: seconds from onset until the victim leaves the shadow Service's slices, from
the first request of the episode to reach it (either client) until then (goal:
p99Threshold + 1 s), and from onset until fewer than 1 % of new requests reach it (1 s
bins by when a request was due; a request that timed out on a connection whose pod is
unknown counts as the victim's, since the others answer in 10 ms); seconds from
recovery until it is back in the slices and receives traffic again; success rate
during the episode for both clients (goal for Aviator: >= 99.95 % at the 1 s time-out),
with Aviator's failures listed: in flight at the onset, sent before the victim left
the slices (no routing can save those: it cannot be known slow before a request has
been open p99Threshold), or after.
The plot (bench/out/reaction.png) shows requests per pod per second, the victim's
share and client p99 per second for both clients.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aviator.kube import KubeClient
from aviator.kube.resources import AVIATORPOLICIES
from bench.common import (
    OUT_DIR,
    BoxHandle,
    OpenLoopClient,
    Row,
    Sample,
    deployment,
    in_shared_box,
    percentile,
    plot_over_time,
    policy_body,
    row,
    service_manifest,
)
from bench.tail_latency_bench import slice_pods, wait_endpoints

NAME = "reaction"
NS = "bench-reaction"
TARGET = "web"
SHADOW = f"{TARGET}-aviator"
PODS_N = 10
INTERVAL_S = 1.0
THRESHOLD_S = 0.5
TIMEOUT_S = 1.0
PLOT = OUT_DIR / "reaction.png"


@dataclass(frozen=True)
class Timeline:
    warmup_s: float
    episode_s: float
    after_s: float
    recovery_interval_s: float
    rate_per_s: float
    requests_per_connection: int


def run(quick: bool) -> list[Row]:
    timeline = Timeline(5, 12, 15, 3, 30, 5) if quick else Timeline(20, 60, 60, 10, 50, 5)
    return in_shared_box(NAME, NS, lambda box: _run(box, timeline))


async def _run(box: BoxHandle, tl: Timeline) -> list[Row]:
    problem = await box.wait_aviator()
    if problem is not None:
        return [row(NAME, "not measured", 0.0, "", note=f"Aviator not runnable: {problem}")]
    kube = await KubeClient.load(str(box.kubeconfig))
    victim: str | None = None
    try:
        box.kubectl("create", "namespace", NS)
        docs = [
            deployment(TARGET, {"app": TARGET}, PODS_N, "10ms"),
            service_manifest(TARGET, {"app": TARGET}),
        ]
        box.kubectl("apply", "-n", NS, "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))
        box.kubectl(
            "wait", "-n", NS, "--for=condition=Available", f"deployment/{TARGET}", "--timeout=180s"
        )
        await wait_endpoints(kube, box, NS, TARGET, PODS_N)
        await kube.create(
            AVIATORPOLICIES,
            policy_body(
                TARGET,
                TARGET,
                evaluationInterval=f"{INTERVAL_S:g}s",
                selection={"mode": "percentage", "percentage": 100},
                circuitBreaker={
                    "enabled": True,
                    "p99Threshold": f"{THRESHOLD_S * 1000:g}ms",
                    "consecutiveViolations": 2,
                    "recoveryInterval": f"{tl.recovery_interval_s:g}s",
                },
            ),
            NS,
        )
        await wait_endpoints(kube, box, NS, SHADOW, PODS_N)
        pods = sorted(await slice_pods(kube, NS, SHADOW))
        victim = pods[0]
        return await _episode(box, kube, tl, victim, pods)
    finally:
        if victim is not None:
            box.set_pod_latency(NS, victim, None)
        await kube.close()


async def _episode(
    box: BoxHandle, kube: KubeClient, tl: Timeline, victim: str, pods: list[str]
) -> list[Row]:
    shadow = await box.wait_address(NS, SHADOW)
    target = await box.wait_address(NS, TARGET)
    clients = {
        "aviator": OpenLoopClient(
            lambda: shadow, tl.rate_per_s, tl.requests_per_connection, TIMEOUT_S, seed=1
        ),
        "round robin": OpenLoopClient(
            lambda: target, tl.rate_per_s, tl.requests_per_connection, TIMEOUT_S, seed=2
        ),
    }
    total_s = tl.warmup_s + tl.episode_s + tl.after_s
    t0 = time.monotonic()
    loads = [asyncio.create_task(c.run(total_s)) for c in clients.values()]
    in_slices: list[tuple[float, bool]] = []
    states: list[tuple[float, str]] = []  # the victim's state in the policy status

    async def watch_slices() -> None:
        while True:
            present = victim in await slice_pods(kube, NS, SHADOW)
            in_slices.append((time.monotonic(), present))
            status = (await kube.get(AVIATORPOLICIES, TARGET, NS)).get("status") or {}
            for pod_row in status.get("pods") or []:
                if pod_row.get("name") == victim:
                    state = str(pod_row.get("state"))
                    if not states or not states[-1][1].startswith(state):
                        p99 = pod_row.get("p99Ms")
                        seen = f"p99 {p99:.0f} ms" if isinstance(p99, int | float) else "no p99"
                        detail = f"{state} ({seen}, {pod_row.get('samples')} samples)"
                        states.append((time.monotonic(), detail))
            await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch_slices())
    await asyncio.sleep(tl.warmup_s)
    box.set_pod_latency(NS, victim, "2s")
    onset = time.monotonic()
    await asyncio.sleep(tl.episode_s)
    box.set_pod_latency(NS, victim, None)
    recovery = time.monotonic()
    await asyncio.gather(*loads)
    watcher.cancel()
    samples = {name: c.samples for name, c in clients.items()}
    dialled = clients["aviator"].connections_opened / (time.monotonic() - t0)
    for c in clients.values():
        await c.close()
    _plot(samples, victim, pods, t0, onset, recovery)
    return _rows(samples, in_slices, states, victim, onset, recovery, tl, dialled)


def _is_victim(s: Sample, victim: str) -> bool:
    return s.served_by == victim or (not s.ok and s.served_by is None)


def _bins(samples: Sequence[Sample], start: float, end: float) -> list[list[Sample]]:
    n = max(0, math.ceil(end - start))
    out: list[list[Sample]] = [[] for _ in range(n)]
    for s in samples:
        if start <= s.at < end:
            out[int(s.at - start)].append(s)
    return out


def _share(b: Sequence[Sample], victim: str) -> float:
    return sum(_is_victim(s, victim) for s in b) / len(b) if b else 0.0


def _time_below(samples: Sequence[Sample], victim: str, onset: float, end: float) -> float | None:
    """Seconds from onset to the start of the first 1 s bin after which every bin of the
    episode has < 1 % of its requests reaching the victim."""
    bins = _bins(samples, onset, end)
    last_bad = -1
    for i, b in enumerate(bins):
        if _share(b, victim) >= 0.01:
            last_bad = i
    return float(last_bad + 1) if last_bad + 1 < len(bins) else None


def _first_hit(samples: Sequence[Sample], victim: str, onset: float) -> float | None:
    """Seconds from onset until the first request of the episode reaching the victim was
    due (either client: the agent sees every request the pod gets). Until one has been
    open for p99Threshold, nothing can tell the victim is slow."""
    hits = [s.at for s in samples if s.at >= onset and _is_victim(s, victim)]
    return min(hits) - onset if hits else None


def _failures(
    samples: Sequence[Sample],
    victim: str,
    onset: float,
    known: float | None,
    removed: float | None,
    end: float,
) -> str:
    """The failed requests of the episode, for the note: when each was due (s from
    onset), where it went (v: a kept-alive connection to the victim, ?: a connection
    whose pod is unknown, else the pod), and how many were in flight at the onset, sent
    before the victim could be known slow (`known`, s from onset: its first request
    open p99Threshold; no routing can save those), before it left the slices
    (`removed`: the reaction's), or after."""
    failed = sorted(
        (s for s in samples if not s.ok and s.at < end and s.at + s.latency_s >= onset),
        key=lambda s: s.at,
    )
    if not failed:
        return "no failures"

    def where(s: Sample) -> str:
        return "v" if s.served_by == victim else "?" if s.served_by is None else s.served_by

    cuts = [0.0, math.inf if known is None else known, math.inf if removed is None else removed]
    counts = [0, 0, 0, 0]
    for s in failed:
        counts[sum(s.at - onset >= c for c in cuts)] += 1
    listed = ", ".join(f"{s.at - onset:+.2f} {where(s)}" for s in failed[:12])
    more = f" and {len(failed) - 12} more" if len(failed) > 12 else ""
    return (
        f"failures (due, s from onset; v kept-alive to the victim, ? pod unknown): {listed}"
        f"{more}; {counts[0]} in flight at the onset, {counts[1]} sent before the victim "
        f"could be known slow (first request + p99Threshold), {counts[2]} before it left "
        f"the slices, {counts[3]} after"
    )


def _first(in_slices: list[tuple[float, bool]], after: float, present: bool) -> float | None:
    for t, p in in_slices:
        if t >= after and p is present:
            return t - after
    return None


def _rows(
    samples: dict[str, list[Sample]],
    in_slices: list[tuple[float, bool]],
    states: list[tuple[float, str]],
    victim: str,
    onset: float,
    recovery: float,
    tl: Timeline,
    dialled: float,
) -> list[Row]:
    av = samples["aviator"]
    below = _time_below(av, victim, onset, recovery)
    ejected = _first(in_slices, onset, False)
    # Readmission counts from recovery, or from the ejection if that came later.
    readmitted = None
    if ejected is not None:
        since = max(recovery, onset + ejected)
        back = _first(in_slices, since, True)
        readmitted = None if back is None else since + back - recovery
    fair = 1 / PODS_N
    traffic_back = None
    for i, b in enumerate(_bins(av, recovery, recovery + tl.after_s)):
        if _share(b, victim) >= fair / 2:
            traffic_back = float(i)
            break
    episode = {k: [s for s in v if onset <= s.at < recovery] for k, v in samples.items()}
    success = {k: sum(s.ok for s in v) / len(v) if v else 0.0 for k, v in episode.items()}
    goal_s = 2 * INTERVAL_S + 1
    readmit_goal_s = tl.recovery_interval_s + 2 * INTERVAL_S
    setup = (
        f"{PODS_N} pods at 10 ms, victim 2 s for {tl.episode_s:g} s; "
        f"{tl.rate_per_s:g} req/s per client, {tl.requests_per_connection} per connection"
    )

    def opt(v: float | None) -> float:
        return v if v is not None else float("nan")

    p99 = {k: percentile([s.latency_s * 1000 for s in v], 0.99) for k, v in episode.items()}
    first_hit = _first_hit([s for v in samples.values() for s in v], victim, onset)
    reaction = None if ejected is None or first_hit is None else ejected - first_hit
    return [
        row(
            NAME,
            "onset -> victim out of the shadow slices",
            opt(ejected),
            "s",
            note=setup if ejected is not None else "never left the slices; " + setup,
        ),
        row(
            NAME,
            "first request to the victim -> victim out of the shadow slices",
            opt(reaction),
            "s",
            goal=f"<= {THRESHOLD_S + 1:g} s (p99Threshold + 1 s)",
            note=f"the first request of either client reached the victim {opt(first_hit):.2f} s "
            "after the onset",
        ),
        row(
            NAME,
            "onset -> < 1 % of new requests reach the victim",
            opt(below),
            "s",
            goal=f"<= {goal_s:g} s (2 evaluation intervals + 1 s)",
            note="1 s bins by due time; unknown-pod time-outs count as the victim's",
        ),
        row(
            NAME,
            "recovery -> victim back in the shadow slices",
            opt(readmitted),
            "s",
            goal=f"<= {readmit_goal_s:g} s (recoveryInterval + 2 evaluation intervals)",
            note=f"recoveryInterval {tl.recovery_interval_s:g} s; victim states (s from onset): "
            + ", ".join(f"{t - onset:+.1f} {st}" for t, st in states if t >= onset - 1)
            + f"; recovery at +{recovery - onset:.0f}"
            + ("" if ejected is not None else "; never ejected"),
        ),
        row(
            NAME,
            "recovery -> victim gets >= half its fair share again",
            opt(traffic_back),
            "s",
        ),
        row(
            NAME,
            "success rate during the episode, Aviator",
            100 * success["aviator"],
            "%",
            goal=">= 99.95 % at a 1 s time-out",
            note=f"{len(episode['aviator'])} requests; client p99 {p99['aviator']:.0f} ms; "
            f"{dialled:.1f} new connections/s, one in {PODS_N} to the victim; "
            + _failures(
                av,
                victim,
                onset,
                None if first_hit is None else first_hit + THRESHOLD_S,
                ejected,
                recovery,
            ),
        ),
        row(
            NAME,
            "success rate during the episode, round robin",
            100 * success["round robin"],
            "%",
            note=f"{len(episode['round robin'])} requests; client p99 {p99['round robin']:.0f} ms",
        ),
        row(
            NAME,
            "success rate during the episode, Aviator / round robin",
            success["aviator"] / success["round robin"] if success["round robin"] else 0.0,
            "x",
            ratio=success["aviator"] / success["round robin"] if success["round robin"] else 0.0,
            note=f"plot: bench/out/{PLOT.name}",
        ),
    ]


def _plot(
    samples: dict[str, list[Sample]],
    victim: str,
    pods: list[str],
    t0: float,
    onset: float,
    recovery: float,
) -> None:
    end = max((s.at for v in samples.values() for s in v), default=t0) + 1
    to_victim: list[tuple[float, float]] = []
    to_others: list[tuple[float, float]] = []
    for i, b in enumerate(_bins(samples["aviator"], t0, end)):
        others = sum(1 for s in b if s.ok and s.served_by != victim)
        to_victim.append((float(i), float(sum(1 for s in b if _is_victim(s, victim)))))
        to_others.append((float(i), others / max(1, len(pods) - 1)))
    per_pod: dict[str, Sequence[tuple[float, float]]] = {
        "victim": to_victim,
        "other pods (mean)": to_others,
    }
    share: dict[str, Sequence[tuple[float, float]]] = {}
    p99: dict[str, Sequence[tuple[float, float]]] = {}
    for name, v in samples.items():
        bins = _bins(v, t0, end)
        share[name] = [(float(i), 100 * _share(b, victim)) for i, b in enumerate(bins)]
        p99[name] = [
            (float(i), percentile([s.latency_s * 1000 for s in b], 0.99))
            for i, b in enumerate(bins)
            if b
        ]
    plot_over_time(
        PLOT,
        "one of 10 pods turns 10 ms -> 2 s, then recovers (client time-out 1 s)",
        [
            ("requests/s per pod (Aviator)", per_pod),
            ("% of requests to the victim", share),
            ("client p99 per second (ms)", p99),
        ],
        markers=[(onset - t0, "onset"), (recovery - t0, "recovery")],
    )
