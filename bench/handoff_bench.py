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
(goal: zero caused by hand-off), retries in the note; a failed request pipelined behind
another on its connection is counted in the note, not the row (the program sees
pipelined requests as one; a pipelining client retries them: docs/agent.md).

The fleet, the policy, the variants and the rows are protocol-neutral (`measure`, with a
`Client` factory); bench/handoff_grpc_bench.py runs them with long-lived gRPC channels.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import uvloop

from aviator.box.kubeproxy import unavailable
from aviator.kube import KubeClient
from aviator.kube.resources import AVIATORPOLICIES, CORE_EVENTS, SERVICES
from aviator.testing.pool import KeepAlivePool
from bench.common import (
    REPO,
    BoxHandle,
    Row,
    box_unavailable,
    deployment,
    in_shared_box,
    policy_body,
    quantiles,
    row,
    service_manifest,
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
    load = Load(60, 4, 16) if quick else Load(80, 10, 40)
    return measure(
        Bench(NAME, NS, "http1", f"pool of {POOL}", "requests"),
        _pool_client,
        load,
    )


@dataclass(frozen=True)
class Timed:
    """One request or RPC: when it was due (monotonic s), its latency (None when it got
    no answer), whether it succeeded, who served it, the error when it failed; `pipelined`:
    an HTTP/1.1 request sent on its connection before the previous request's answer came
    (a failed one is counted apart: docs/agent.md, hand-off and pipelining)."""

    at: float
    latency_s: float | None
    ok: bool
    served_by: str | None
    error: str | None = None
    pipelined: bool = False


class Client(Protocol):
    """A client holding long-lived connections to one Service address."""

    async def run(self, rate_per_s: float, duration_s: float, seed: int) -> list[Timed]: ...

    async def close(self) -> None: ...

    def redials(self, policy_at: float) -> str:
        """What the client re-dialled (and retried), for the note; `policy_at`: when
        the policy was created (monotonic s)."""
        ...


# A client of a Service address; the second argument is the network namespace to connect
# from (a /proc/<pid>/ns/net path, the box's where ClusterIPs exist) or None (the host's).
ClientFactory = Callable[[tuple[str, int], str | None], Awaitable[Client]]


@dataclass(frozen=True)
class Bench:
    name: str
    namespace: str
    protocol: str  # the test app's PROTOCOL
    client: str  # what the client is, for the notes
    unit: str  # "requests" or "RPCs"
    # Through the box's real kube-proxy (a box of its own, `--proxy kube-proxy`; the
    # client in the box's network namespace, to the Services' ClusterIPs) rather than
    # the box proxy's host addresses.
    kube_proxy: bool = False


class _Pool:
    def __init__(self, address: tuple[str, int]) -> None:
        self.pool = KeepAlivePool(lambda: address, size=POOL)

    async def run(self, rate_per_s: float, duration_s: float, seed: int) -> list[Timed]:
        samples = await self.pool.run(rate_per_s, duration_s, seed=seed)
        return [Timed(s.at, s.latency_s, s.ok, s.served_by, s.error) for s in samples]

    async def close(self) -> None:
        await self.pool.close()

    def redials(self, policy_at: float) -> str:
        return f"{self.pool.retries} retried on a fresh connection, {self.pool.opened} connections opened"


async def _pool_client(address: tuple[str, int], netns: str | None) -> Client:
    if netns is not None:
        raise ValueError("the pool client connects from the host's network namespace only")
    return _Pool(address)


def measure(bench: Bench, client: ClientFactory, load: Load) -> list[Row]:
    """The fleet in the box, variants (a) and (b), the oracle, and their rows."""
    reason = box_unavailable() or (unavailable(REPO / "bin") if bench.kube_proxy else None)
    if reason:
        return [row(bench.name, "skipped", 0.0, "", note=reason)]
    if not bench.kube_proxy:
        return in_shared_box(
            bench.name, bench.namespace, lambda box: _run(box, bench, client, load)
        )
    # A box of its own, stopped when done: the other box benchmarks keep the box proxy.
    with BoxHandle(args=["--proxy", "kube-proxy"]) as box:
        return uvloop.run(_run(box, bench, client, load))


async def _run(box: BoxHandle, bench: Bench, client: ClientFactory, load: Load) -> list[Row]:
    problem = await box.wait_aviator()
    if problem is not None:
        return [
            row(bench.name, "skipped", 0.0, "", note=f"Aviator not runnable in the box: {problem}")
        ]
    ns = bench.namespace
    kube = await KubeClient.load(str(box.kubeconfig))
    try:
        box.kubectl("create", "namespace", ns)
        labels = {"app": TARGET}
        docs = [
            deployment("fast", {**labels, "speed": "fast"}, 8, "10ms", protocol=bench.protocol),
            deployment("slow", {**labels, "speed": "slow"}, 2, "500ms", protocol=bench.protocol),
            service_manifest(TARGET, labels),
            service_manifest(ORACLE, {**labels, "speed": "fast"}),
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
        route = _Route(box, kube, ns, bench.kube_proxy)
        results = {}
        for label, enabled in (("(a) hand-off off", False), ("(b) hand-off on", True)):
            await route.wait_endpoints(TARGET, 10)
            results[label] = await _variant(route, kube, ns, client, load, enabled, bench.protocol)
        # The oracle last, on a box as warm as the variants had it.
        await route.wait_endpoints(ORACLE, 8)
        oracle = await client(*await route.address(ORACLE))
        try:
            await oracle.run(load.rate_per_s, load.warmup_s, 1)  # connections fill
            oracle_samples = await oracle.run(load.rate_per_s, load.after_s, 2)
        finally:
            await oracle.close()
        return _rows(bench, oracle_samples, results, load)
    finally:
        await kube.close()


@dataclass(frozen=True)
class _Route:
    """How the client reaches a Service: the box proxy's host address, or (kube_proxy)
    the ClusterIP from inside the box's network namespace."""

    box: BoxHandle
    kube: KubeClient
    ns: str
    kube_proxy: bool

    async def address(self, service: str) -> tuple[tuple[str, int], str | None]:
        """The address to dial and the network namespace to dial it from."""
        if not self.kube_proxy:
            return await self.box.wait_address(self.ns, service), None
        svc = await self.kube.get(SERVICES, service, self.ns)
        spec = svc.get("spec") or {}
        netns = f"/proc/{int(self.box.status(fresh=True)['pid'])}/ns/net"
        return (str(spec["clusterIP"]), int(spec["ports"][0]["port"])), netns

    async def wait_endpoints(self, service: str, n: int, timeout_s: float = 120) -> None:
        """Until the Service's slices hold `n` pods and its proxy follows them (the box
        proxy's count, or kube-proxy's rules as the box reads them)."""
        await wait_endpoints(
            self.kube, self.box, self.ns, service, n, timeout_s, kube_proxy=self.kube_proxy
        )


@dataclass
class Outcome:
    samples: list[Timed]
    created: float  # when the policy was created (monotonic)
    window_from: float | None
    converged_after_s: float | None
    redials: str
    status: str  # the policy's conditions at the end, when it never converged
    agents: str  # what the agents reported (ConnectionsHandedOff Events)


async def _variant(
    route: _Route,
    kube: KubeClient,
    ns: str,
    client: ClientFactory,
    load: Load,
    enabled: bool,
    protocol: str,
) -> Outcome:
    c = await client(*await route.address(TARGET))
    started = time.monotonic()
    traffic = asyncio.get_running_loop().create_task(
        c.run(load.rate_per_s, load.warmup_s + load.after_s, 3)
    )
    try:
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
        if protocol == "grpc":
            # Keep-warm probes of idle pods call a method that does the app's work (the
            # default path would call the health check, which answers at once).
            spec["probePath"] = "/aviator.testapp.TestApp/Call"
        await kube.create(AVIATORPOLICIES, policy_body(TARGET, TARGET, **spec), ns)
        converged: float | None = None
        listed: set[str] = set()  # pods the policy's status.handOffs named
        while not traffic.done():
            obj = await kube.get(AVIATORPOLICIES, TARGET, ns)
            listed.update(
                str(h.get("pod")) for h in (obj.get("status") or {}).get("handOffs") or []
            )
            pods = await slice_pods(kube, ns, TARGET)
            if (
                converged is None
                and len(pods) == 8
                and not any(p.startswith("slow-") for p in pods)
            ):
                converged = time.monotonic()
            await asyncio.sleep(0.25)
        samples = await traffic
    finally:
        await c.close()
    status = "" if converged is not None else await _conditions(kube, ns)
    agents = f"status.handOffs named {', '.join(sorted(listed)) or 'no pod'}; " + (
        await _handed_off(kube, ns)
    )
    await kube.delete(AVIATORPOLICIES, TARGET, ns)
    await _wait_restored(kube, ns)
    window = None if converged is None else converged + 2 * INTERVAL_S + PERIOD_S
    return Outcome(
        [s for s in samples if s.at >= started],
        created,
        window,
        None if converged is None else converged - created,
        c.redials(created),
        status,
        agents,
    )


async def _handed_off(kube: KubeClient, ns: str) -> str:
    """The agents' ConnectionsHandedOff Events of this run (the namespace's, oldest
    first; the policy is deleted after each variant, so older ones are of (a))."""
    answer = await kube.list(
        CORE_EVENTS, ns, params={"fieldSelector": "reason=ConnectionsHandedOff"}
    )
    items = sorted(answer.get("items") or [], key=lambda e: str(e.get("lastTimestamp") or ""))
    return "; ".join(str(e.get("message") or "") for e in items) or "none"


async def _conditions(kube: KubeClient, ns: str) -> str:
    """The policy's conditions in short, and the pods in its slices."""
    obj = await kube.get(AVIATORPOLICIES, TARGET, ns)
    conditions = (obj.get("status") or {}).get("conditions") or []
    said = "; ".join(
        f"{c.get('type')}={c.get('status')} {c.get('reason')}: {c.get('message')}"
        for c in conditions
    )
    pods = "; ".join(
        f"{p.get('name')} {p.get('state')} p99 {p.get('p99Ms')} ms of {p.get('samples')} "
        f"({p.get('keepWarmSamples')} keep-warm)"
        for p in sorted(
            (obj.get("status") or {}).get("pods") or [], key=lambda p: str(p.get("name"))
        )
    )
    return f"{said}; slices: {', '.join(sorted(await slice_pods(kube, ns, TARGET)))}; pods: {pods}"


async def _wait_restored(kube: KubeClient, ns: str, timeout_s: float = 60) -> None:
    """The finalizer restores the Service's selector; wait for it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        svc = await kube.get(SERVICES, TARGET, ns)
        if (svc.get("spec") or {}).get("selector"):
            return
        await asyncio.sleep(0.25)


def _p99(samples: list[Timed]) -> float:
    answered = [s.latency_s * 1000 for s in samples if s.latency_s is not None]
    return quantiles(answered, (0.99,))[0] if answered else float("nan")


def _rows(bench: Bench, oracle: list[Timed], results: dict[str, Outcome], load: Load) -> list[Row]:
    name, unit = bench.name, bench.unit
    oracle_p99 = _p99(oracle)
    rows = [
        row(
            name,
            "(o) oracle: client p99",
            oracle_p99,
            "ms",
            note=f"{bench.client}, {load.rate_per_s:g} {unit}/s open loop; "
            f"{sum(1 for s in oracle if not s.ok)} failed of {len(oracle)}",
        )
    ]
    for label, out in results.items():
        failed = [s for s in out.samples if not s.ok and not s.pipelined]
        pipelined = sum(1 for s in out.samples if not s.ok and s.pipelined)
        if out.window_from is None:
            rows.append(
                row(
                    name,
                    f"{label}: client p99",
                    float("nan"),
                    "ms",
                    note=f"never converged: {out.status}",
                )
            )
        else:
            window = [s for s in out.samples if s.at >= out.window_from]
            p99 = _p99(window)
            slow = sum(1 for s in window if (s.served_by or "").startswith("slow-"))
            rows.append(
                row(
                    name,
                    f"{label}: client p99 after convergence",
                    p99,
                    "ms",
                    ratio=p99 / oracle_p99 if oracle_p99 else None,
                    goal=GOAL if "on" in label else None,
                    note=f"from convergence ({out.converged_after_s:.1f} s after the policy) + "
                    f"2 intervals + {PERIOD_S:g} s; {len(window)} {unit}, "
                    f"{slow} served by slow pods; {out.redials}; agents: {out.agents}",
                )
            )
        rows.append(
            row(
                name,
                f"{label}: failed {unit}",
                float(len(failed)),
                "",
                goal="0" if "on" in label else None,
                note=f"of {len(out.samples)} over the whole run; errors: "
                + (
                    ", ".join(
                        f"{s.error or '?'} at {s.at - out.created:+.1f} s"
                        for s in sorted(failed, key=lambda s: s.at)[:8]
                    )
                    or "none"
                )
                + " (times from the policy's creation)"
                + (
                    f"; and {pipelined} pipelined behind another request on its connection, "
                    "which hand-off does not see and RFC 9112 asks the client to retry"
                    if pipelined
                    else ""
                ),
            )
        )
    return rows
