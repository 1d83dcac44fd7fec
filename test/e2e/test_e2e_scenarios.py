"""The product's e2e scenarios, written once against a cluster (the box or Kind).

Each test gets its own namespace with the quick-start apps: fast-app (2 pods, 10 ms),
slow-app (2 pods, 500 ms) and my-app-service over all four. Policies are the sample
policy with a 1 s evaluation interval. Every wait has a deadline and polls something
observable (EndpointSlices, the policy status, client responses).
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from typing import Any

import pytest
from e2e_cluster import BoxCluster
from e2e_scenario import SHADOW, TARGET, Scenario, wait_for

pytestmark = pytest.mark.e2e

# Generous bounds so a loaded CI machine does not flake; the demo shows the real figures.
CONVERGE_S = 30.0
# Fast-pod level: well under half a slow pod's 500 ms, so no request met a slow pod.
# (The absolute p99 of a 10 ms pod through the proxy depends on the machine's load:
# 40-130 ms on a busy 2-core CI machine; the demo prints the figures.)
FAST_P99_MS = 250.0


async def test_quickstart_routes_to_fast_pods(quickstart: Scenario) -> None:
    """(1) The quick-start: routing converges to the fast pods; client p99 drops."""
    before = await quickstart.measure(TARGET, seconds=4)
    assert before.errors == 0
    assert before.p99_ms is not None and before.p99_ms > 400, before

    quickstart.apply(quickstart.policy())
    took = await quickstart.converge_to_fast(SHADOW, timeout_s=CONVERGE_S)

    after = await quickstart.measure(SHADOW, seconds=4)
    assert after.errors == 0, after
    assert set(after.by_pod) <= await quickstart.pods("fast")
    assert after.p99_ms is not None and after.p99_ms < FAST_P99_MS, after
    assert before.p99_ms / after.p99_ms > 2

    _policy, _ = await wait_for(
        "kubectl get avp to show 2 of 4 active",
        quickstart.avp,
        lambda p: (
            bool(p)
            and (p.get("status") or {}).get("activePods") == 2
            and (p.get("status") or {}).get("totalPods") == 4
        ),
        timeout_s=10,
    )
    print(
        f"quick-start: converged in {took:.1f}s; p99 {before.p99_ms:.0f} -> {after.p99_ms:.0f} ms"
    )


async def test_fast_pod_turning_slow_is_ejected_and_readmitted(quickstart: Scenario) -> None:
    """(2) A fast pod turns slow mid-run: ejected, traffic moves, readmitted on recovery."""
    quickstart.apply(
        quickstart.policy(
            circuitBreaker={
                "enabled": True,
                "p99Threshold": "750ms",  # the slow-app pods (500 ms) stay in; 2 s violates
                "consecutiveViolations": 2,
                "recoveryInterval": "3s",
            },
            dampening={"enabled": False},
        )
    )
    await quickstart.converge_to_fast(SHADOW, timeout_s=CONVERGE_S)
    victim, healthy = sorted(await quickstart.pods("fast"))
    load = quickstart.load(SHADOW)

    quickstart.cluster.set_pod_latency(quickstart.ns, victim, "2s")
    _, ejected_after = await wait_for(
        f"{victim} to leave {SHADOW}",
        lambda: quickstart.routed(SHADOW),
        lambda pods: victim not in pods and healthy in pods,
        timeout_s=CONVERGE_S,
    )
    # The selection alone may move traffic first (2 s is slower than the slow pods);
    # the circuit breaker then ejects it after consecutiveViolations evaluations.
    await wait_for(
        f"{victim} to be listed as ejected",
        quickstart.avp,
        lambda p: p is not None and victim in (p.get("status") or {}).get("ejectedPods", []),
        timeout_s=CONVERGE_S,
    )
    # Requests sent to the victim before new connections left it may still end there
    # (they take its 2 s; the breaker ejects on a request open past p99Threshold, often
    # before any of them ended): the claim is about requests sent after.
    await quickstart.proxy_follows(SHADOW)
    window = await load.started_window(load.mark(), count=20, timeout_s=CONVERGE_S)
    assert victim not in window.by_pod, window

    quickstart.cluster.set_pod_latency(quickstart.ns, victim, None)
    try:
        _, readmitted_after = await wait_for(
            f"{victim} to be readmitted to {SHADOW}",
            lambda: quickstart.routed(SHADOW),
            lambda pods: victim in pods,
            timeout_s=CONVERGE_S,
        )
    except AssertionError as err:
        status = ((await quickstart.avp()) or {}).get("status", {})
        raise AssertionError(f"{err}\npolicy status: {pod_rows(status)}") from None
    print(f"ejected after {ejected_after:.1f}s, readmitted {readmitted_after:.1f}s after recovery")


async def test_scaling_the_fast_deployment_is_followed(quickstart: Scenario) -> None:
    """(3) Scale the fast Deployment up and down: Aviator's slices follow."""
    quickstart.apply(quickstart.policy())
    await quickstart.converge_to_fast(SHADOW, timeout_s=CONVERGE_S)
    load = quickstart.load(SHADOW, concurrency=2)  # latency data for the new pods

    quickstart.kubectl("scale", "deployment/fast-app", "--replicas=4")
    await quickstart.wait_ready_pods(fast=4, slow=2)
    fast = await quickstart.pods("fast")
    want = math.ceil(0.5 * 6)
    await wait_for(
        f"{SHADOW} to route to {want} fast pods",
        lambda: quickstart.routed(SHADOW),
        lambda pods: len(pods) == want and pods <= fast,
        timeout_s=CONVERGE_S,
    )

    quickstart.kubectl("scale", "deployment/fast-app", "--replicas=1")
    await quickstart.wait_ready_pods(fast=1, slow=2)
    (survivor,) = await quickstart.pods("fast")
    live = await quickstart.pods("fast") | await quickstart.pods("slow")
    await wait_for(
        f"{SHADOW} to drop the deleted pods and keep {survivor}",
        lambda: quickstart.routed(SHADOW),
        lambda pods: survivor in pods and pods <= live and len(pods) == math.ceil(0.5 * 3),
        timeout_s=CONVERGE_S,
    )
    errors = Counter((s.error, s.served_by) for s in load.samples if not s.ok)
    assert load.summary().errors <= load.summary().count * 0.01, errors


async def test_deleting_the_policy_cleans_up(quickstart: Scenario) -> None:
    """(4) Delete the policy: Aviator's Service and slices go; the target still serves."""
    quickstart.apply(quickstart.policy())
    await quickstart.converge_to_fast(SHADOW, timeout_s=CONVERGE_S)
    load = quickstart.load(TARGET, concurrency=2)
    quickstart.kubectl("delete", "aviatorpolicy", "e2e-policy", "--wait=true", "--timeout=30s")

    await wait_for("the policy to be gone", quickstart.avp, lambda p: p is None, timeout_s=30)
    await wait_for(
        f"Service {SHADOW} to be deleted",
        lambda: quickstart.service(SHADOW),
        lambda s: s is None,
        timeout_s=30,
    )
    await wait_for(
        f"the slices of {SHADOW} to be deleted",
        lambda: quickstart.routed(SHADOW),
        lambda pods: not pods,
        timeout_s=30,
    )
    assert len(await quickstart.routed(TARGET)) == 4
    after = load.mark()
    await asyncio.sleep(2.0)  # traffic keeps flowing through the untouched target
    window = load.summary(since=after)
    assert window.count > 0 and window.errors == 0, window
    assert load.summary().errors == 0, load.summary()


async def test_takeover_routes_the_original_service_and_restores_it(quickstart: Scenario) -> None:
    """(5) Takeover: the original Service name routes to fast pods; restored on delete."""
    original = await quickstart.service(TARGET)
    assert original is not None
    selector = original["spec"]["selector"]
    quickstart.apply(
        quickstart.policy(
            selection={"mode": "topN", "topN": 2},
            routing={"mode": "takeover"},
        )
    )
    await quickstart.converge_to_fast(TARGET, timeout_s=CONVERGE_S)
    taken = await quickstart.service(TARGET)
    assert taken is not None and not taken["spec"].get("selector"), taken["spec"]
    after = await quickstart.measure(TARGET, seconds=3)
    assert after.errors == 0 and set(after.by_pod) <= await quickstart.pods("fast"), after
    assert after.p99_ms is not None and after.p99_ms < FAST_P99_MS, after

    quickstart.kubectl("delete", "aviatorpolicy", "e2e-policy", "--wait=true", "--timeout=30s")
    _restored, _ = await wait_for(
        f"{TARGET}'s selector to be restored",
        lambda: quickstart.service(TARGET),
        lambda s: s is not None and s["spec"].get("selector") == selector,
        timeout_s=30,
    )
    await wait_for(
        f"{TARGET} to route to all 4 pods again",
        lambda: quickstart.routed(TARGET),
        lambda pods: len(pods) == 4,
        timeout_s=30,
    )


async def test_controller_restart_keeps_routing(quickstart: Scenario) -> None:
    """(6) The controller is killed and restarted: routing keeps working and resumes."""
    quickstart.apply(quickstart.policy())
    await quickstart.converge_to_fast(SHADOW, timeout_s=CONVERGE_S)
    fast = await quickstart.pods("fast")
    load = quickstart.load(SHADOW, concurrency=2)
    cluster = quickstart.cluster
    old_pid = cluster.controller_pid()
    cluster.kill_controller()
    killed = load.mark()

    if isinstance(cluster, BoxCluster):
        await wait_for(
            "the box to restart the controller",
            lambda: _pid(cluster),
            lambda pid: pid is not None and pid != old_pid,
            timeout_s=30,
        )
    # While it is down and restarting, routing keeps working: the slices stay.
    assert await quickstart.routed(SHADOW) == fast
    window = load.summary(since=killed)
    assert window.errors == 0 and set(window.by_pod) <= fast, window

    # And it resumes: a new fast pod is picked up (50 % of 5 pods = the 3 fast ones).
    quickstart.kubectl("scale", "deployment/fast-app", "--replicas=3")
    await quickstart.wait_ready_pods(fast=3, slow=2)
    fast = await quickstart.pods("fast")
    await wait_for(
        f"the restarted controller to route {SHADOW} to the 3 fast pods",
        lambda: quickstart.routed(SHADOW),
        lambda pods: pods == fast,
        timeout_s=CONVERGE_S + 15,  # + a lease duration, should the Lease not be released
    )


def pod_rows(status: dict[str, Any]) -> str:
    rows = [
        f"{p.get('name')} {p.get('state')} p99={p.get('p99Ms')} n={p.get('samples')} {p.get('reason')}"
        for p in status.get("pods", [])
    ]
    return f"ejected={status.get('ejectedPods')}; " + "; ".join(rows)


async def _pid(cluster: BoxCluster) -> int | None:
    return cluster.controller_pid()
