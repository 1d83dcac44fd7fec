"""`aviator box demo`: the product quick-start, live, in one terminal.

Up the box, apply the fast and slow test apps and their Service, drive client traffic
through the Service, measure p50/p99, apply the sample AviatorPolicy, and show what
`kubectl get avp -w` shows, which pods serve, and the client latency before and after,
until Ctrl-C or --duration; then tear everything down.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from aviator.box.box import Box, BoxOptions
from aviator.box.console import print_access, say
from aviator.box.endpoints import endpoint_pods
from aviator.box.files import APP_MANIFESTS, SAMPLE_POLICY, SERVICE_MANIFEST
from aviator.box.netns import BoxNetwork
from aviator.box.stats import Summary
from aviator.box.traffic import Address, Load
from aviator.kube.client import ApiError
from aviator.kube.resources import AVIATORPOLICIES, PODS

NAMESPACE = "default"
BEFORE_S = 10.0
REPORT_EVERY_S = 5.0


@dataclass
class PolicyPlan:
    """What the sample policy will do, read from its YAML."""

    name: str
    target: str
    routed: str  # the Service whose slices Aviator owns (shadow name or the target)
    mode: str
    interval_s: float

    @classmethod
    def load(cls, path: Path) -> PolicyPlan:
        doc: dict[str, Any] = yaml.safe_load(path.read_text())
        spec = doc.get("spec", {})
        target = spec["targetRef"]["name"]
        routing = spec.get("routing") or {}
        mode = routing.get("mode", "shadow")
        routed = target if mode == "takeover" else routing.get("serviceName", f"{target}-aviator")
        return cls(
            name=doc["metadata"]["name"],
            target=target,
            routed=routed,
            mode=mode,
            interval_s=_seconds(str(spec.get("evaluationInterval", "5s"))),
        )


def _seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


def avp_line(policy: dict[str, Any], now: datetime) -> str:
    """One `kubectl get avp` row: NAME ACTIVE TOTAL P99ms SOURCE AGE."""
    status = policy.get("status") or {}
    created = policy["metadata"].get("creationTimestamp")
    age = "-"
    if created:
        born = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        secs = int((now - born).total_seconds())
        age = f"{secs}s" if secs < 120 else f"{secs // 60}m"
    p99 = status.get("p99LatencyMs")
    cells = [
        policy["metadata"]["name"],
        str(status.get("activePods", "")),
        str(status.get("totalPods", "")),
        "" if p99 is None else f"{float(p99):.0f}",
        str(status.get("source", "")),
        age,
    ]
    return "{:<16} {:>6} {:>6} {:>6}  {:<7} {:>5}".format(*cells)


AVP_HEADER = "{:<16} {:>6} {:>6} {:>6}  {:<7} {:>5}".format(
    "NAME", "ACTIVE", "TOTAL", "P99ms", "SOURCE", "AGE"
)


@dataclass
class Scoreboard:
    before: Summary | None = None
    after: Summary | None = None
    applied_at: float | None = None
    converged_after_s: float | None = None
    lines: list[str] = field(default_factory=list)


def _address(box: Box, service: str) -> Address | None:
    if box.proxy is None:
        return None
    ports = box.proxy.listeners.get(f"{NAMESPACE}/{service}") or {}
    for listener in ports.values():
        if listener.backends:
            return (listener.ip, listener.port)
    return None


def _serving(box: Box, service: str) -> list[str]:
    if box.proxy is None:
        return []
    slices = box.proxy.slices_by_service.get(f"{NAMESPACE}/{service}", {}).values()
    return sorted(endpoint_pods(slices).values())


async def _pods_by_version(box: Box) -> dict[str, set[str]]:
    assert box.client is not None
    pods = await box.client.list(PODS, NAMESPACE, params={"labelSelector": "app=my-app"})
    out: dict[str, set[str]] = {}
    for p in pods.get("items", []):
        version = p["metadata"].get("labels", {}).get("version", "?")
        out.setdefault(version, set()).add(p["metadata"]["name"])
    return out


def _by_pod(summary: Summary) -> str:
    return ", ".join(f"{pod} {n}" for pod, n in sorted(summary.by_pod.items())) or "-"


async def run_demo(
    options: BoxOptions,
    network: BoxNetwork,
    duration: float | None,
    stop_after_converged: float | None = None,
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    box = Box(options, network, progress=say)
    board = Scoreboard()
    loads: list[Load] = []
    began = time.monotonic()
    try:
        await box.start()
        print_access(box.kubeconfig, box.options.workdir)
        await _demo(box, board, loads, stop, duration, began, stop_after_converged)
    finally:
        for load in loads:
            await load.stop()
        _final_screen(board)
        await box.stop()
    return 0


async def _demo(
    box: Box,
    board: Scoreboard,
    loads: list[Load],
    stop: asyncio.Event,
    duration: float | None,
    began: float,
    stop_after_converged: float | None,
) -> None:
    if duration is not None:
        loop = asyncio.get_running_loop()
        loop.call_at(loop.time() + max(0.0, duration - (time.monotonic() - began)), stop.set)

    def stopped() -> bool:
        return stop.is_set()

    for manifest in (*APP_MANIFESTS, SERVICE_MANIFEST):
        code, out = await box.kubectl("apply", "-f", str(manifest))
        say(out if code == 0 else f"kubectl apply -f {manifest.name} failed: {out}")
    plan = PolicyPlan.load(SAMPLE_POLICY) if SAMPLE_POLICY.exists() else None
    target = plan.target if plan else "my-app-service"
    say("waiting for the 4 test pods to be Ready and the Service to get endpoints ...")
    if not await _until(lambda: len(_serving(box, target)) >= 4, stop):
        return
    address = _address(box, target)
    say(f"{target} is served by {', '.join(_serving(box, target))}")
    say(f"{target} answers on {address[0]}:{address[1]} (box proxy)" if address else "")
    spread = Load(
        lambda: _address(box, target), concurrency=4, connect=box.network.open_host_connection
    )
    loads.append(spread)
    spread.start()
    t0 = time.monotonic()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), BEFORE_S)
    board.before = spread.summary(since=t0)
    say(f"BEFORE Aviator, client via {target}: {board.before.line()}")
    say(f"  requests per pod: {_by_pod(board.before)}")
    if stopped():
        return
    if plan is None:
        say(f"no sample policy at {SAMPLE_POLICY}; showing traffic only")
    elif not box.crd.startswith("installed"):
        say(f"the AviatorPolicy CRD is {box.crd}; cannot apply the policy, showing traffic only")
    else:
        code, out = await box.kubectl("apply", "-f", str(SAMPLE_POLICY))
        say(out if code == 0 else f"applying the sample policy failed: {out}")
        if code == 0:
            board.applied_at = time.monotonic()
            say(
                f"policy {plan.name}: {plan.mode} routing, evaluationInterval "
                f"{plan.interval_s:g}s; Aviator's routing shows on Service {plan.routed}"
            )
    routed = plan.routed if plan else target
    aviator_load = None
    if plan is not None and routed != target:
        aviator_load = Load(
            lambda: _address(box, routed),
            concurrency=2,  # fast answers: 2 clients already make ~100 requests/s
            connect=box.network.open_host_connection,
        )
        loads.append(aviator_load)
        aviator_load.start()

    def finished() -> bool:
        if stop_after_converged is not None and board.converged_after_s is not None:
            assert board.applied_at is not None
            since = board.applied_at + board.converged_after_s
            return stopped() or time.monotonic() >= since + stop_after_converged
        return stopped()

    await _watch(box, board, plan, spread, aviator_load, finished)


async def _watch(
    box: Box,
    board: Scoreboard,
    plan: PolicyPlan | None,
    spread: Load,
    aviator_load: Load | None,
    stopped: Callable[[], bool],
) -> None:
    assert box.client is not None
    routed_load = aviator_load or spread
    last_avp = last_serving = ""
    last_report = time.monotonic()
    printed_header = False
    versions = await _pods_by_version(box)
    fast = versions.get("fast", set())
    while not stopped():
        await asyncio.sleep(0.5)
        now = time.monotonic()
        if plan is not None and board.applied_at is not None:
            try:
                policy = await box.client.get(AVIATORPOLICIES, plan.name, NAMESPACE)
                line = avp_line(policy, datetime.now(UTC))
            except ApiError as err:
                line = f"{plan.name}: {err.reason or err.status}"
            if line[:-6] != last_avp[:-6]:  # a -w line per change; AGE alone is no change
                if not printed_header:
                    print(f"       {AVP_HEADER}", flush=True)
                    printed_header = True
                print(f"{_t(board)} {line}", flush=True)
                last_avp = line
            serving = ", ".join(_serving(box, plan.routed)) or "(no endpoints yet)"
            if serving != last_serving:
                say(f"{_t(board)} {plan.routed} -> {serving}")
                last_serving = serving
            served = set(_serving(box, plan.routed))
            if board.converged_after_s is None and served and fast and served <= fast:
                board.converged_after_s = now - board.applied_at
                say(
                    f"{_t(board)} converged: only fast pods serve {plan.routed}, "
                    f"{board.converged_after_s:.1f}s after the policy was applied "
                    f"({board.converged_after_s / plan.interval_s:.1f} evaluation intervals)"
                )
        if now - last_report >= REPORT_EVERY_S:
            last_report = now
            window = now - REPORT_EVERY_S
            target = plan.target if plan else "my-app-service"
            say(f"{_t(board)} client via {target:<24} {spread.summary(window).line()}")
            if aviator_load is not None and plan is not None:
                say(
                    f"{_t(board)} client via {plan.routed:<24} {aviator_load.summary(window).line()}"
                )
        if board.converged_after_s is not None and board.applied_at is not None:
            since = board.applied_at + board.converged_after_s
            board.after = routed_load.summary(since=since)


async def _until(condition: Any, stop: asyncio.Event, poll_s: float = 0.2) -> bool:
    """Poll until condition() holds (True) or stop is set (False)."""
    while True:
        if condition():
            return True
        if stop.is_set():
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), poll_s)


def _t(board: Scoreboard) -> str:
    if board.applied_at is None:
        return "      "
    return f"t+{time.monotonic() - board.applied_at:4.0f}s"


def _final_screen(board: Scoreboard) -> None:
    print("", flush=True)
    say("summary")
    if board.before is not None:
        say(f"  before Aviator (spread over all pods): {board.before.line()}")
    if board.after is not None:
        say(f"  after Aviator  (routed to fast pods):  {board.after.line()}")
        if board.before and board.before.p99_ms and board.after.p99_ms:
            say(f"  client p99 improved {board.before.p99_ms / board.after.p99_ms:.1f}x")
    if board.converged_after_s is not None:
        say(f"  converged {board.converged_after_s:.1f}s after the policy was applied")
    elif board.applied_at is not None:
        say("  routing did not converge to the fast pods while the demo ran")
