"""Controller scale: the real `aviator controller` process against a real API server, fed
by simulated agents over the real websocket (real ServiceAccount tokens, TokenReview).

Three fleets: 1 policy over 5,000 pods and 500 policies over 10 pods each, evaluated
every second, and 5,000 policies over 10 pods each (50,000 pods) evaluated every 5 s
(quick: 200 pods / 20 policies of 10). Services are headless (a test control plane has
only a few hundred cluster IPs, and every policy adds a shadow Service). Pods are API
objects whose status (podIP, Ready) we write through the status subresource, as a
kubelet would (none runs); one simulated agent per 100 pods, each its own node, sends a
v1 snapshot every second, the agent's default report interval (stable latencies, so
the chosen set is stable). Where the policies evaluate every second it carries every
pod of its node. Where they evaluate less often (the 50,000-pod fleet), the agents
pace their reports as `aviator agent --steady-report-interval 5` does
(aviator.agent.reportpacing): a steady pod's windows go out merged once per
evaluationInterval (here its 5 s of samples in one window, the node's pods spread over
the 5 s as pods started at different times would be), a changed one at the next
report; the controller keeps latency for its default 10 s. Per fleet:

- evaluation time: the controller's own reconcile-duration histogram over a steady
  window (mean per reconcile, and the total per evaluation interval);
- controller CPU (cores) and RSS from /proc/<pid> over that window;
- API writes per minute in steady state (must be zero; steady: the convergence's
  hand-offs have left the statuses and 5 s passed without a write) and while 1 % of the pods
  flip readiness every second (churn), counted by watching EndpointSlices, Services,
  AviatorPolicies and Events in the namespace, i.e. as the API server saw them;
- reaction: one serving pod of the first policy turns slow (1 s) in its agent's next
  snapshot; seconds until it is out of the policy's slices (circuit breaker, one
  violation), against evaluationInterval + 1 s;
- ingestion: every agent sends snapshots back to back; endpoint windows ingested
  (the receiver's counter) per second of wall time and per controller CPU second. Not
  at 50,000 pods: there the controller is busy with 1,000 reconciles a second, and an
  unthrottled flood from 500 agents (the stream's per-connection rate limit lifted)
  onto a replica that busy measures the receiver shedding what it cannot take, not
  ingesting (runs took in 78 to 8,700 windows a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from aviator.api.types import SHADOW_SUFFIX
from aviator.box.endpoints import ready_backends
from aviator.kube import KubeClient
from aviator.kube.marks import LABEL_SERVICE_NAME
from aviator.kube.resources import AVIATORPOLICIES, ENDPOINTSLICES, EVENTS, SERVICES
from bench.common import (
    ControllerProcess,
    CpuMeter,
    Row,
    SimAgent,
    WriteWatch,
    agent_token,
    bench_node,
    bounded,
    create_ready_pods,
    create_service,
    metric_sum,
    new_namespace,
    pod_ip,
    policy_body,
    process_rss_bytes,
    row,
    set_pod_ready,
    snapshot_json,
    start_control_plane,
)

NAME = "controller_scale"
REPORT_S = 1.0  # the agents' report interval (the agent's default)
SAMPLES = 50  # requests per pod per second in a snapshot (snapshot_json's default)
STEADY_S = 5.0  # the agents' --steady-report-interval where policies evaluate less often
PODS_PER_AGENT = 100
SLOW_MS = 1000.0  # the reaction's slow pod: above the policies' p99Threshold
DRAIN_WAIT_S = 60.0  # the longest wait, after a blast, for the receiver to count what was sent
GOAL_EVAL = "<= 100 ms for 5,000 pods"
GOAL_INGEST = ">= 50,000 /s per core"
GOAL_WRITES = "0 in steady state"
GOAL_CORES_50K = 0.3  # DESIGN §9: 50,000 pods at 5 s intervals
GOAL_RSS_50K_MIB = 1024.0


@dataclass(frozen=True)
class Fleet:
    label: str
    policies: int
    pods_per_policy: int
    interval_s: float = 1.0  # every policy's evaluationInterval

    @property
    def pods(self) -> int:
        return self.policies * self.pods_per_policy

    @property
    def phases(self) -> int:
        """Reports between two of a steady pod's (1: every pod in every report)."""
        return max(1, round(min(self.interval_s, STEADY_S) / REPORT_S))

    @property
    def large(self) -> bool:
        """The 50,000-pod fleet, which has goals of its own."""
        return self.pods >= 50_000


@dataclass(frozen=True)
class Sizes:
    steady_s: float
    churn_s: float
    blast_s: float


def _latency_ms(i: int) -> float:
    """Stable, distinct-enough latencies: 5..104 ms, so the fastest half is well defined."""
    return 5.0 + (i * 37) % 100


def run(quick: bool) -> list[Row]:
    sizes = Sizes(steady_s=4, churn_s=4, blast_s=1) if quick else Sizes(30, 30, 10)
    fleets = (
        [Fleet("1 policy x 200 pods", 1, 200), Fleet("20 policies x 10 pods", 20, 10)]
        if quick
        else [
            Fleet("1 policy x 5000 pods", 1, 5000),
            Fleet("500 policies x 10 pods", 500, 10),
            Fleet("5000 policies x 10 pods", 5000, 10, interval_s=5.0),
        ]
    )
    rows: list[Row] = []
    for fleet in fleets:
        # A control plane per fleet: the next controller must not carry this fleet's
        # objects in its caches, and deleting 5,000 pods costs more than a restart.
        cp = start_control_plane()
        try:
            rows += uvloop.run(_fleet(cp.kubeconfig, fleet, sizes))
        except Exception as exc:  # the other fleet's figures still count
            traceback.print_exc()
            rows.append(row(NAME, f"{fleet.label}: FAILED", 0.0, "", note=repr(exc)[:300]))
        finally:
            cp.stop()
    return rows


async def _fleet(kubeconfig: Path, fleet: Fleet, sizes: Sizes) -> list[Row]:
    kube = await KubeClient.load(str(kubeconfig))
    try:
        ns = await new_namespace(kube, "scale")
        nodes = max(1, fleet.pods // PODS_PER_AGENT)
        # One agent per node, each with a token bound to its node (the controller takes
        # what an agent sends for its own node's pods only).
        tokens = [await agent_token(kube, ns, node=bench_node(a)) for a in range(nodes)]
        names = [f"p-{i}" for i in range(fleet.pods)]
        ips = [pod_ip(i) for i in range(fleet.pods)]
        start = time.monotonic()
        await bounded(
            [
                functools.partial(
                    create_service, kube, ns, f"svc-{j}", {"app": f"svc-{j}"}, headless=True
                )
                for j in range(fleet.policies)
            ]
        )
        per = fleet.pods_per_policy
        await bounded(
            [
                functools.partial(
                    create_ready_pods,
                    kube,
                    ns,
                    list(
                        zip(
                            names[j * per : (j + 1) * per],
                            ips[j * per : (j + 1) * per],
                            strict=True,
                        )
                    ),
                    {"app": f"svc-{j}"},
                    nodes,
                    first=j * per,
                )
                for j in range(fleet.policies)
            ],
            in_flight=8 if fleet.policies > 1 else 1,
        )
        setup_s = time.monotonic() - start
        _progress(f"{fleet.label}: {fleet.pods} pods and their Services written in {setup_s:.0f} s")
        controller = ControllerProcess(
            kubeconfig,
            ns,
            # Paced agents send a pod every few seconds: the controller's defaults keep it.
            window_s=3.0 if fleet.phases == 1 else 10.0,
            stale_after_s=5.0 if fleet.phases == 1 else 10.0,
            extra=(
                "--no-leader-elect",
                # The ingestion row sends back to back: it measures the receiver, not
                # the per-connection message rate that keeps a real agent at a few a second.
                "--stream-messages-per-second",
                "1000000",
                # 50,000 pods are more endpoints than the default bound holds (docs/controller.md, Memory).
                "--latency-max-endpoints",
                str(max(32768, 2 * fleet.pods)),
            ),
        )
        try:
            await controller.wait_ready()
            return await _measure(kube, ns, tokens, controller, fleet, sizes, ips, names, setup_s)
        finally:
            controller.stop()
    finally:
        await kube.close()


async def _measure(
    kube: KubeClient,
    ns: str,
    tokens: list[str],
    controller: ControllerProcess,
    fleet: Fleet,
    sizes: Sizes,
    ips: list[str],
    names: list[str],
    setup_s: float,
) -> list[Row]:
    agents_n = max(1, fleet.pods // PODS_PER_AGENT)
    # Agent a is node a's: it reports the fleet's pods k with k % agents_n == a.
    groups = [list(range(a, fleet.pods, agents_n)) for a in range(agents_n)]
    # A real agent names the pods it reports (the controller checks the name against
    # its own cache, and renames only when they differ).
    pods = {ip: f"{ns}/{name}" for ip, name in zip(ips, names, strict=True)}
    messages = [_paced(a, group, ips, pods, fleet.phases) for a, group in enumerate(groups)]
    agents = [SimAgent(controller.url, tokens[a], _node_address(a)) for a in range(agents_n)]
    async with contextlib.AsyncExitStack() as stack:
        for agent in agents:
            await stack.enter_async_context(agent)
        reporting = asyncio.create_task(_report(agents, messages))
        try:
            await bounded(
                [
                    functools.partial(kube.create, AVIATORPOLICIES, _policy(j, fleet), ns)
                    for j in range(fleet.policies)
                ],
                in_flight=8,
            )
            converge_s = await _converged(kube, ns, fleet)
            _progress(f"{fleet.label}: every policy converged in {converge_s:.0f} s")
            settle_s = await _quiet(kube, ns)
            steady = await _window(kube, ns, controller, sizes.steady_s)
            refused = metric_sum(
                await controller.metrics(), "aviator_stream_endpoints_refused_total"
            )
            if refused:
                raise RuntimeError(
                    f"the controller refused {refused:.0f} endpoint windows: the simulated "
                    "agents report pods that are not on their nodes"
                )
            reaction_s = await _reaction(kube, ns, fleet, groups, ips, pods, messages)
            churn = await _window(
                kube, ns, controller, sizes.churn_s, churn=(names, ips, max(1, fleet.pods // 100))
            )
        finally:
            reporting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporting
        ingest = None
        if not fleet.large:
            # The blast sends whole snapshots (every pod), as unpaced agents do.
            full = [_snapshot(a, group, ips, pods) for a, group in enumerate(groups)]
            ingest = await _blast(agents, full, controller, sizes.blast_s)
    return _rows(fleet, setup_s, converge_s, settle_s, steady, churn, ingest, reaction_s)


def _progress(what: str) -> None:
    print(f"bench: {NAME}: {what}", file=sys.stderr, flush=True)


def _node_address(agent: int) -> str:
    """Agent `agent`'s source address: 127.1.0.1 onwards, one per node."""
    return f"127.1.{agent // 250}.{agent % 250 + 1}"


def _snapshot(
    agent: int, group: list[int], ips: list[str], pods: Mapping[str, str], slow: int | None = None
) -> str:
    return snapshot_json(
        bench_node(agent),
        [(ips[i], SLOW_MS if i == slow else _latency_ms(i)) for i in group],
        samples=SAMPLES,
        window_s=REPORT_S,
        pods=pods,
    )


def _paced(
    agent: int,
    group: list[int],
    ips: list[str],
    pods: Mapping[str, str],
    phases: int,
    slow: int | None = None,
) -> list[str]:
    """The agent's snapshot at each of `phases` reports in turn: pod j of its node goes
    out at report j % phases with `phases` seconds of samples; a `slow` pod (changed)
    at every report. One phase: every pod at every report."""
    if phases == 1:
        return [_snapshot(agent, group, ips, pods, slow)]
    out = []
    for phase in range(phases):
        mine = [i for j, i in enumerate(group) if j % phases == phase or i == slow]
        out.append(
            snapshot_json(
                bench_node(agent),
                [(ips[i], SLOW_MS if i == slow else _latency_ms(i)) for i in mine],
                samples=SAMPLES * phases,
                window_s=REPORT_S,
                pods=pods,
            )
        )
    return out


def _policy(j: int, fleet: Fleet) -> dict[str, object]:
    return policy_body(
        f"pol-{j}",
        f"svc-{j}",
        evaluationInterval=f"{int(fleet.interval_s * 1000)}ms",
        selection={"mode": "percentage", "percentage": 50},
        # One violation ejects: the reaction row times a change, not the breaker's patience.
        circuitBreaker={"enabled": True, "p99Threshold": "500ms", "consecutiveViolations": 1},
    )


async def _report(agents: list[SimAgent], messages: list[list[str]]) -> None:
    """Every agent sends its next message in turn every REPORT_S (messages may be
    replaced)."""
    tick = 0
    while True:
        started = time.monotonic()
        await asyncio.gather(
            *(a.send(m[tick % len(m)]) for a, m in zip(agents, messages, strict=True))
        )
        tick += 1
        await asyncio.sleep(max(0.0, REPORT_S - (time.monotonic() - started)))


async def _reaction(
    kube: KubeClient,
    ns: str,
    fleet: Fleet,
    groups: list[list[int]],
    ips: list[str],
    pods: Mapping[str, str],
    messages: list[list[str]],
    timeout_s: float = 60.0,
) -> float:
    """Seconds from the fastest pod of pol-0 turning slow in its agent's message until it
    is out of pol-0's slices (the agents' next report is up to REPORT_S later; that
    delay is counted, as a real agent's would be). Its message is restored afterwards."""
    victim = min(range(fleet.pods_per_policy), key=_latency_ms)  # pol-0's pods: 0..per-1
    agent = victim % len(groups)
    selector = f"{LABEL_SERVICE_NAME}=svc-0{SHADOW_SUFFIX}"
    start = time.monotonic()
    messages[agent] = _paced(agent, groups[agent], ips, pods, fleet.phases, slow=victim)
    try:
        while time.monotonic() - start < timeout_s:
            slices = await kube.list(ENDPOINTSLICES, ns, params={"labelSelector": selector})
            serving = {ip for ip, _ in ready_backends("http", slices.get("items") or [])}
            if ips[victim] not in serving:
                return time.monotonic() - start
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{fleet.label}: the slow pod stayed in the slices {timeout_s:.0f}s")
    finally:
        messages[agent] = _paced(agent, groups[agent], ips, pods, fleet.phases)


async def _converged(kube: KubeClient, ns: str, fleet: Fleet, timeout_s: float = 900) -> float:
    """Seconds until every policy reports its fastest half active."""
    want = (fleet.pods_per_policy + 1) // 2
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        items = await _all_policies(kube, ns)
        done = sum(1 for p in items if (p.get("status") or {}).get("activePods") == want)
        if done == fleet.policies:
            return time.monotonic() - start
        # A list of thousands of policies is work for the API server too.
        await asyncio.sleep(0.5 if fleet.policies <= 500 else 5.0)
    raise RuntimeError(f"{fleet.label}: policies did not converge in {timeout_s:.0f}s")


async def _all_policies(kube: KubeClient, ns: str, page: int = 500) -> list[dict[str, Any]]:
    """Every policy, in pages: one list of thousands of policies with their status rows
    is tens of MB, more than a busy API server answers within a request's time-out."""
    items: list[dict[str, Any]] = []
    params: dict[str, str | int | bool] = {"limit": page}
    while True:
        answer = await kube.list(AVIATORPOLICIES, ns, params=params)
        items += answer.get("items") or []
        token = (answer.get("metadata") or {}).get("continue")
        if not token:
            return items
        params = {"limit": page, "continue": token}


async def _quiet(kube: KubeClient, ns: str, span_s: float = 5.0, timeout_s: float = 300) -> float:
    """Seconds until no policy's status lists a hand-off any more (a status write drops
    each once it has lingered) and then a span passes without any write (dampening and
    the first status writes have played out): only then is it steady state."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        listed = await kube.list(AVIATORPOLICIES, ns)
        if not any((p.get("status") or {}).get("handOffs") for p in listed.get("items") or []):
            break
        await asyncio.sleep(1.0)
    while time.monotonic() - start < timeout_s:
        watch = WriteWatch(kube, ns, [ENDPOINTSLICES, SERVICES, AVIATORPOLICIES, EVENTS])
        await watch.start()
        await asyncio.sleep(span_s)
        await watch.stop()
        if watch.total() == 0:
            return time.monotonic() - start
    return time.monotonic() - start


@dataclass
class Window:
    seconds: float
    cpu_s: float
    rss_bytes: int
    writes: dict[str, int]
    reconciles: float
    reconcile_s: float
    full_collections: float = 0.0  # the garbage collector's oldest generation, in the window


async def _window(
    kube: KubeClient,
    ns: str,
    controller: ControllerProcess,
    seconds: float,
    churn: tuple[list[str], list[str], int] | None = None,
) -> Window:
    watch = await WriteWatch(kube, ns, [ENDPOINTSLICES, SERVICES, AVIATORPOLICIES, EVENTS]).start()
    await asyncio.sleep(0.3)  # the watches are open
    before = await controller.metrics()
    meter = CpuMeter(controller.pid).start()
    rss = 0
    end = time.monotonic() + seconds
    tick = 0
    while time.monotonic() < end:
        if churn is not None:
            names, ips, per_tick = churn
            picks = [(tick * per_tick + k) % len(names) for k in range(per_tick)]
            # Odd ticks restore what the even tick before took away.
            ready = tick % 2 == 1
            if ready:
                picks = [((tick - 1) * per_tick + k) % len(names) for k in range(per_tick)]
            await asyncio.gather(*(set_pod_ready(kube, ns, names[i], ips[i], ready) for i in picks))
        tick += 1
        rss = max(rss, process_rss_bytes(controller.pid))
        await asyncio.sleep(max(0.0, end - time.monotonic()) if churn is None else 1.0)
    cpu_s, wall_s = meter.read()
    after = await controller.metrics()
    await asyncio.sleep(0.5)  # late watch events of this window
    await watch.stop()
    return Window(
        seconds=wall_s,
        cpu_s=cpu_s,
        rss_bytes=max(rss, process_rss_bytes(controller.pid)),
        writes=dict(watch.counts),
        reconciles=metric_sum(after, "aviator_reconcile_duration_seconds_count")
        - metric_sum(before, "aviator_reconcile_duration_seconds_count"),
        reconcile_s=metric_sum(after, "aviator_reconcile_duration_seconds_sum")
        - metric_sum(before, "aviator_reconcile_duration_seconds_sum"),
        full_collections=metric_sum(after, "python_gc_collections_total", generation="2")
        - metric_sum(before, "python_gc_collections_total", generation="2"),
    )


@dataclass
class Ingest:
    endpoints: float
    seconds: float
    cpu_s: float
    lost: int = 0  # agents whose stream closed during the blast
    shed: int = 0  # snapshots the receiver dropped unread (it was far behind)
    sent: int = 0  # snapshots sent
    uncounted: int = 0  # snapshots sent that the receiver had not counted when the wait ended


async def _blast(
    agents: list[SimAgent], messages: list[str], controller: ControllerProcess, seconds: float
) -> Ingest:
    """Every agent sends its snapshot back to back for `seconds`; the receiver's count
    of the windows it took, once it has taken or shed (receiver: a replica far behind
    drops an agent's oldest waiting snapshots) every message sent."""
    metrics = await controller.metrics()
    before = metric_sum(metrics, "aviator_stream_endpoints_total")
    messages_before = metric_sum(metrics, "aviator_stream_messages_total")
    shed_before = metric_sum(metrics, "aviator_stream_messages_total", result="shed")
    meter = CpuMeter(controller.pid).start()
    end = time.monotonic() + seconds
    lost = 0

    async def one(agent: SimAgent, message: str) -> int:
        nonlocal lost
        sent = 0
        try:
            while time.monotonic() < end:
                await agent.send(message)
                sent += 1
                await asyncio.sleep(0)  # let the other agents and the writer run
        except (ConnectionError, aiohttp.ClientError):
            lost += 1  # said in the row's note; what was counted before stands
        return sent

    counts = await asyncio.gather(*(one(a, m) for a, m in zip(agents, messages, strict=True)))
    sent = sum(counts)
    throttled = metric_sum(
        await controller.metrics(), "aviator_stream_messages_total", result="throttled"
    )
    if throttled:
        raise RuntimeError(
            f"{throttled:.0f} snapshots throttled: the row would count what was dropped"
        )
    # The receiver drains what is still buffered; wait until every message is counted.
    # Each look is a scrape, whose CPU the row counts: the pause between looks doubles
    # (0.05 s to 1 s), so a long drain costs a handful of scrapes, not one per 0.05 s.
    deadline = time.monotonic() + DRAIN_WAIT_S
    pause = 0.05
    while True:
        metrics = await controller.metrics()
        counted = metric_sum(metrics, "aviator_stream_messages_total") - messages_before
        if counted >= sent or time.monotonic() >= deadline:
            break
        await asyncio.sleep(pause)
        pause = min(2 * pause, 1.0)
    cpu_s, wall_s = meter.read()
    return Ingest(
        endpoints=metric_sum(metrics, "aviator_stream_endpoints_total") - before,
        seconds=wall_s,
        cpu_s=cpu_s,
        lost=lost,
        shed=int(metric_sum(metrics, "aviator_stream_messages_total", result="shed") - shed_before),
        sent=sent,
        uncounted=max(0, int(sent - counted)),
    )


def _rows(
    fleet: Fleet,
    setup_s: float,
    converge_s: float,
    settle_s: float,
    steady: Window,
    churn: Window,
    ingest: Ingest | None,
    reaction_s: float,
) -> list[Row]:
    label = fleet.label
    per_reconcile_ms = 1000 * steady.reconcile_s / steady.reconciles if steady.reconciles else 0.0
    intervals = steady.seconds / fleet.interval_s
    cores = steady.cpu_s / steady.seconds
    rss_mib = steady.rss_bytes / 2**20
    reaction_goal_s = fleet.interval_s + REPORT_S
    per_interval_ms = 1000 * steady.reconcile_s / intervals if intervals else 0.0
    steady_writes = sum(steady.writes.values())
    churn_writes = sum(churn.writes.values())
    churn_detail = ", ".join(f"{k} {v}" for k, v in sorted(churn.writes.items())) or "none"
    steady_detail = ", ".join(f"{k} {v}" for k, v in sorted(steady.writes.items())) or "none"
    cpu_ms = 1000 * steady.cpu_s / intervals if intervals else 0.0
    goal_cpu = fleet.pods == 5000 and not fleet.large
    rows = [
        row(
            NAME,
            f"{label}: evaluation time per reconcile (mean)",
            per_reconcile_ms,
            "ms",
            goal=GOAL_EVAL if fleet.policies == 1 else None,
            note=f"{steady.reconciles:.0f} reconciles in {steady.seconds:.0f} s, wall time; "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
        ),
        row(
            NAME,
            f"{label}: evaluation time per interval (all policies)",
            per_interval_ms,
            "ms",
            note=f"evaluationInterval {fleet.interval_s:g} s; {fleet.pods} pods",
        ),
        row(
            NAME,
            f"{label}: controller CPU per interval",
            cpu_ms,
            "ms",
            # DESIGN §9: 5,000 pods cost <= 100 ms of CPU per interval, however many
            # policies share them (1 x 5,000 and 500 x 10).
            goal="<= 100 ms for 5,000 pods" if goal_cpu else None,
            ratio=cpu_ms / 100.0 if goal_cpu else None,
            note="all work per interval (evaluation + snapshot ingestion), CPU time",
        ),
        row(
            NAME,
            f"{label}: controller CPU, steady state",
            cores,
            "cores",
            goal=f"<= {GOAL_CORES_50K:g} cores at 5 s intervals" if fleet.large else None,
            ratio=cores / GOAL_CORES_50K if fleet.large else None,
            note=f"agents report every {REPORT_S:g} s, {PODS_PER_AGENT} pods each"
            + f"; {steady.full_collections:.0f} full garbage collections in the window"
            + (
                f"; a steady pod every {fleet.phases * REPORT_S:g} s (--steady-report-interval "
                f"{STEADY_S:g}), a change at once"
                if fleet.phases > 1
                else ""
            ),
        ),
        row(
            NAME,
            f"{label}: controller RSS",
            rss_mib,
            "MiB",
            goal="<= 1 GiB" if fleet.large else None,
            ratio=rss_mib / GOAL_RSS_50K_MIB if fleet.large else None,
            note="peak over the steady window",
        ),
        row(
            NAME,
            f"{label}: API writes, steady state",
            60 * steady_writes / steady.seconds,
            "writes/min",
            goal=GOAL_WRITES,
            note=f"{steady_detail} in {steady.seconds:.0f} s (watched), from the first "
            f"5 s without writes once every hand-off left the statuses ({settle_s:.0f} s after "
            "convergence)",
        ),
        row(
            NAME,
            f"{label}: API writes under churn",
            60 * churn_writes / churn.seconds,
            "writes/min",
            note=f"1 % of pods flip readiness each second; {churn_detail}",
        ),
        row(
            NAME,
            f"{label}: latency change -> out of the slices",
            reaction_s,
            "s",
            goal=f"<= evaluationInterval + {REPORT_S:g} s",
            ratio=reaction_s / reaction_goal_s,
            note=f"a serving pod's latency turns {SLOW_MS:.0f} ms in its agent's next report "
            f"(every {REPORT_S:g} s); evaluationInterval {fleet.interval_s:g} s",
        ),
        row(
            NAME,
            f"{label}: time to converge",
            converge_s,
            "s",
            note=f"policies created → every one reports its active set; setup {setup_s:.0f} s",
        ),
    ]
    if ingest is not None:
        per_core = ingest.endpoints / ingest.cpu_s if ingest.cpu_s else 0.0
        rows += [
            row(
                NAME,
                f"{label}: snapshot ingestion",
                ingest.endpoints / ingest.seconds if ingest.seconds else 0.0,
                "pod updates/s",
                note=f"{ingest.endpoints:.0f} endpoint windows in {ingest.seconds:.1f} s wall"
                + (f"; {ingest.shed} of {ingest.sent} snapshots shed" if ingest.shed else "")
                + (f"; {ingest.lost} agents' streams closed during it" if ingest.lost else "")
                + (
                    f"; {ingest.uncounted} of {ingest.sent} snapshots not counted within the "
                    f"{DRAIN_WAIT_S:g} s wait after it"
                    if ingest.uncounted
                    else ""
                ),
            ),
            row(
                NAME,
                f"{label}: snapshot ingestion per core",
                per_core,
                "pod updates/s",
                goal=GOAL_INGEST,
                ratio=per_core / 50_000,
                note=f"per controller CPU second ({ingest.cpu_s:.1f} s); ratio to the goal",
            ),
        ]
    return rows
