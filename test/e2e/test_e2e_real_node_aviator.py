"""Aviator from its own images and manifests on the box's real node (e2e_real_node.py):
`make deploy-all` runs the controller Deployment (2 replicas, leader election) and the
agent DaemonSet (eBPF in a container with the manifest's capabilities and host
mounts); the quick-start apps run in network namespaces of their own; clients reach
the Services' ClusterIPs through the real kube-proxy.

Skips, saying why, where the node components or images are missing (`make
node-components images`).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import test_e2e_scenarios as scenarios
from e2e_cluster import node_unavailable, skip_if
from e2e_real_node import AVIATOR_NS, IMAGES, RealNodeCluster
from e2e_scenario import SHADOW, TARGET, Scenario, deployed_quickstart, wait_for

from aviator.box.traffic import Load
from aviator.kube.client import KubeClient

pytestmark = pytest.mark.e2e

CONVERGE_S = 45.0  # generous: every pod, Aviator included, shares the node's 2 cores
FAST_P99_MS = 250.0  # well under a slow pod's 500 ms (see test_e2e_scenarios.py)
LEASE_DURATION_S, RETRY_PERIOD_S = 15.0, 2.0  # the controller's defaults
# Samples a fast pod's window holds when the clients' requests are measured: the load
# (2 clients, a new connection per request) sends each fast pod tens a second; keep-warm
# alone is a few a window.
MIN_CLIENT_SAMPLES = 30


@pytest.fixture(scope="module")
def real_cluster() -> Iterator[RealNodeCluster]:
    skip_if(node_unavailable(real_node=True, images=IMAGES))
    began = time.monotonic()
    cluster = RealNodeCluster().start()
    try:
        up = time.monotonic() - began
        took = cluster.deploy_aviator()
        print(f"real node: box up in {up:.0f}s, make deploy-all + rollouts in {took:.0f}s")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def api_server(real_cluster: RealNodeCluster) -> RealNodeCluster:
    """`kube` and `namespace` on this module's box."""
    return real_cluster


@pytest.fixture
async def quickstart(
    real_cluster: RealNodeCluster, kube: KubeClient, namespace: str
) -> AsyncIterator[Scenario]:
    async with deployed_quickstart(real_cluster, kube, namespace) as scenario:
        yield scenario


def real(scenario: Scenario) -> RealNodeCluster:
    assert isinstance(scenario.cluster, RealNodeCluster)
    return scenario.cluster


def status(policy: dict[str, Any] | None) -> dict[str, Any]:
    return (policy or {}).get("status") or {}


def measured(policy: dict[str, Any] | None, pods: set[str]) -> bool:
    """The policy reads eBPF data, with samples for each of `pods`."""
    st = status(policy)
    samples = {p["name"]: p.get("samples", 0) for p in st.get("pods", [])}
    return st.get("source") == "ebpf" and all(samples.get(p, 0) > 0 for p in pods)


def measures_clients(policy: dict[str, Any] | None, pods: set[str]) -> bool:
    """The agent measures the clients' requests to each of `pods` (under load): its
    window holds MIN_CLIENT_SAMPLES samples or more, at most a quarter of them the
    agent's own keep-warm probes. An agent that missed the pods' traffic still shows
    samples: the keep-warm ones (a few per window), which this tells apart."""
    st = status(policy)
    rows = {p["name"]: p for p in st.get("pods", [])}
    return st.get("source") == "ebpf" and all(
        rows.get(p, {}).get("samples", 0) >= MIN_CLIENT_SAMPLES
        and 4 * rows[p].get("keepWarmSamples", 0) <= rows[p]["samples"]
        for p in pods
    )


async def test_quickstart_routes_to_fast_pods_measured_by_ebpf(quickstart: Scenario) -> None:
    """The quick-start on the real node: the shadow Service's ClusterIP converges to the
    fast pods, client p99 drops, and the agent in its container measured the pods (in
    network namespaces of their own) with eBPF."""
    before = await quickstart.measure(TARGET, seconds=4)
    assert before.errors == 0, before
    assert before.p99_ms is not None and before.p99_ms > 400, before

    quickstart.apply(quickstart.policy(latencySource="ebpf"))
    took = await quickstart.converge_to_fast(SHADOW, timeout_s=CONVERGE_S)
    after = await quickstart.measure(SHADOW, seconds=4)
    assert after.errors == 0, after
    fast = await quickstart.pods("fast")
    assert set(after.by_pod) <= fast, after
    assert after.p99_ms is not None and after.p99_ms < FAST_P99_MS, after

    await wait_for(
        "the policy to show eBPF samples of both fast pods",
        quickstart.avp,
        lambda p: measured(p, fast) and status(p).get("activePods") == 2,
        timeout_s=CONVERGE_S,
    )
    print(
        f"real node quick-start: converged in {took:.1f}s; "
        f"p99 {before.p99_ms:.0f} -> {after.p99_ms:.0f} ms"
    )


async def test_deleting_the_leader_pod_fails_over_with_routing_unchanged(
    quickstart: Scenario,
) -> None:
    """The leader's pod force-deleted: it stops and releases its Lease, and the other
    replica leads at once."""
    leader, new = await _fail_over(quickstart, "pod deleted", _delete_leader)
    assert new != leader


async def test_killing_the_leader_process_fails_over_with_routing_unchanged(
    quickstart: Scenario,
) -> None:
    """The leader's process SIGKILLed: its container restarts in the same pod as a new
    process (a new identity), the Lease is not released, and the standby leads once it
    expires."""
    await _fail_over(quickstart, "process killed", _crash_leader)


async def _fail_over(
    quickstart: Scenario, how: str, kill: Callable[[RealNodeCluster], None]
) -> tuple[str, str]:
    """Kill the leader one way; a controller leads again within LeaseDuration +
    RetryPeriod and evaluates, and the shadow Service keeps the fast pods throughout
    (no request fails or meets a slow pod). Both replicas have watched this test's pods
    from the start (the standby's latency store is warm for them)."""
    cluster = real(quickstart)
    await _kubectl(cluster, "rollout", "status", "deployment/aviator-controller", "--timeout=120s")
    quickstart.apply(quickstart.policy(latencySource="ebpf"))
    await quickstart.converge_to_fast(SHADOW, timeout_s=CONVERGE_S)
    fast = await quickstart.pods("fast")
    load = quickstart.load(SHADOW, concurrency=2)
    bound = LEASE_DURATION_S + RETRY_PERIOD_S + 5  # + the API's and a loaded machine's slack

    leader, _ = cluster.lease()
    await asyncio.to_thread(kill, cluster)
    killed_at = datetime.now(UTC)  # the old leader may renew until then
    (new, _renewed), took = await wait_for(
        f"a controller to lead again ({how})",
        lambda: asyncio.to_thread(cluster.lease),
        lambda lease: bool(lease[0]) and bool(lease[1]) and _time(lease[1]) > killed_at,
        timeout_s=bound + 30,
    )
    print(f"leader {leader} ({how}): {new} leads after {took:.1f}s")
    assert took < bound, took
    routed = await quickstart.routed(SHADOW)
    assert routed == fast, _pods_seen(await quickstart.avp())
    # The new leader evaluates: the policy's status moves on under it.
    began = status(await quickstart.avp()).get("lastEvaluationTime") or ""
    await wait_for(
        "the new leader to evaluate the policy",
        quickstart.avp,
        lambda p: (status(p).get("lastEvaluationTime") or "") > began,
        timeout_s=CONVERGE_S,
    )
    routed = await quickstart.routed(SHADOW)
    assert routed == fast, _pods_seen(await quickstart.avp())
    summary = load.summary()
    assert summary.errors == 0 and set(summary.by_pod) <= fast, _failures(load)
    return leader, new


async def _kubectl(cluster: RealNodeCluster, *args: str) -> None:
    """kubectl in aviator-system off the event loop: the clients' requests keep going."""
    await asyncio.to_thread(cluster.kubectl, "-n", AVIATOR_NS, *args)


def _time(rfc3339: str) -> datetime:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))


def _pods_seen(policy: dict[str, Any] | None) -> str:
    """What the policy's status says of each pod (who wrote it: the last evaluation)."""
    st = status(policy)
    rows = [
        f"{p.get('name')}: {p.get('state')} ({p.get('reason')}) p99 {p.get('p99Ms')} ms "
        f"of {p.get('samples')} samples ({p.get('keepWarmSamples')} keep-warm), "
        f"oldest open {p.get('oldestOpenMs')} ms"
        for p in st.get("pods", [])
    ]
    conditions = [
        f"{c.get('type')}={c.get('status')} ({c.get('reason')})" for c in st.get("conditions", [])
    ]
    return (
        f"evaluated {st.get('lastEvaluationTime')}: "
        + "; ".join(rows)
        + f"; conditions: {', '.join(conditions)}"
    )


def _failures(load: Load) -> str:
    errors = Counter((s.error, s.served_by) for s in load.samples if not s.ok)
    return f"{load.summary()}: {dict(errors)}"


def _delete_leader(cluster: RealNodeCluster) -> None:
    cluster.kill_controller()


def _crash_leader(cluster: RealNodeCluster) -> None:
    cluster.crash_leader()


async def test_restarting_the_agent_pod_keeps_serving_and_resumes_measuring(
    quickstart: Scenario,
) -> None:
    """The agent's pod deleted: the DaemonSet replaces it; every request is answered
    meanwhile, and the new agent measures: a fast pod turned slow afterwards leaves the
    shadow Service (the policy reads eBPF only).

    The first agent, started before the pods (their listeners and connections are its
    program's from their start), measures the clients' requests to the fast pods, not
    only its own keep-warm probes; the replacement seeds the listeners from /proc and
    adopts the open connections.

    The replacement takes about as long as the controller's staleness bound (10 s)
    here, so the node's pods lose their data for a while, the slow ones first (a few
    keep-warm samples each); measured before and silent for want of an agent, they keep
    their places (docs/selection.md: stale pods are not new pods and do not fail open),
    and no request meets a slow pod."""
    cluster = real(quickstart)
    quickstart.apply(quickstart.policy(latencySource="ebpf"))
    await quickstart.converge_to_fast(SHADOW, timeout_s=CONVERGE_S)
    fast = await quickstart.pods("fast")
    load = quickstart.load(SHADOW, concurrency=2)
    await wait_for(
        "the agent (started before the pods) to measure the clients' requests to both fast pods",
        quickstart.avp,
        lambda p: measures_clients(p, fast),
        CONVERGE_S,
    )

    mark = load.mark()
    began = time.monotonic()
    await _kubectl(cluster, "delete", "pod", "-l", "app.kubernetes.io/name=aviator-agent")
    await _kubectl(cluster, "rollout", "status", "daemonset/aviator-agent", "--timeout=180s")
    replaced_s = time.monotonic() - began
    logs = cluster.logs(AVIATOR_NS, "app.kubernetes.io/name=aviator-agent")
    assert "source ebpf" in logs, logs[-2000:]
    await quickstart.converge_to(SHADOW, fast, timeout_s=CONVERGE_S)
    window = load.summary(since=mark)
    assert window.errors == 0, _failures(load)
    print(f"agent pod replaced in {replaced_s:.1f}s; {window.count} requests meanwhile")
    assert set(window.by_pod) <= fast, window  # by_pod: who served them

    # The fast pods kept their places without data; the new agent measures them once it
    # has compiled and attached its program, which a busy node can stretch well past
    # the rollout. Waited for, so the slow pod below is judged on the new agent's data.
    await wait_for(
        "the new agent to measure the clients' requests to both fast pods",
        quickstart.avp,
        lambda p: measures_clients(p, fast),
        2 * CONVERGE_S,
    )
    victim = sorted(fast)[0]
    quickstart.cluster.set_pod_latency(quickstart.ns, victim, "2s")
    try:
        await wait_for(
            f"{victim} (slow since the agent restarted) to leave {SHADOW}",
            lambda: quickstart.routed(SHADOW),
            lambda pods: victim not in pods,
            timeout_s=CONVERGE_S,
        )
    except AssertionError as stayed:
        raise AssertionError(f"{stayed}; {_pods_seen(await quickstart.avp())}") from None
    finally:
        quickstart.cluster.set_pod_latency(quickstart.ns, victim, None)


# The product scenarios that need nothing of the box's own runtime, as they are, on the
# real node (they take this module's `quickstart`).
test_fast_pod_turning_slow_is_ejected_and_readmitted = (
    scenarios.test_fast_pod_turning_slow_is_ejected_and_readmitted
)
test_scaling_the_fast_deployment_is_followed = (
    scenarios.test_scaling_the_fast_deployment_is_followed
)
test_deleting_the_policy_cleans_up = scenarios.test_deleting_the_policy_cleans_up
test_takeover_routes_the_original_service_and_restores_it = (
    scenarios.test_takeover_routes_the_original_service_and_restores_it
)
