"""Protocol-aware measurement in the cluster: a hung pod, a pod answering errors, a
gRPC Service.

- A pod that accepts but never answers leaves the slices within p99Threshold + 1 s
  of the onset with an evaluation interval far longer than that: only the agent's
  urgent report of an open request older than p99Threshold, and the controller's
  evaluation on it, can be that quick.
- A fast pod answering 50 % 503s is ejected by `circuitBreaker.errorRatePercent` and
  readmitted when its errors stop.
- A gRPC Service of 4 pods, one slow, driven by gRPC clients that open a new channel
  every few RPCs: the slow pod leaves the slices, the status reads protocol grpc for
  every pod, and the clients' p99 drops.

The apps are the test app's Deployments (bench/common.py's manifests); every wait has
a deadline and polls something observable.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from e2e_cluster import Cluster
from e2e_scenario import Scenario, wait_for

from aviator.box.stats import Sample, Summary, summarize
from aviator.box.traffic import Load
from aviator.kube.client import KubeClient
from aviator.kube.resources import PODS
from aviator.testing.grpcclient import CALL, RpcSample, run_with_new_channels
from bench.common import deployment, service_manifest

pytestmark = pytest.mark.e2e

CONVERGE_S = 60.0


@pytest.fixture
async def scenario(
    aviator_cluster: Cluster, kube: KubeClient, namespace: str
) -> AsyncIterator[Scenario]:
    """An empty namespace; the test deploys its own apps. Loads stop on exit."""
    s = Scenario(aviator_cluster, kube, namespace)
    try:
        yield s
    finally:
        await s.close()


async def deploy(s: Scenario, app: str, replicas: int, latency: str, protocol: str) -> set[str]:
    """`replicas` test-app pods labelled app=`app` behind a Service of that name; their
    names once all are Ready and routed by the Service."""
    labels = {"app": app}
    for manifest in (
        deployment(app, labels, replicas, latency, readiness_period_s=2, protocol=protocol),
        service_manifest(app, labels),
    ):
        s.apply(manifest)
    pods, _ = await wait_for(
        f"{replicas} ready pods of {app}",
        lambda: ready_pods(s, app),
        lambda p: len(p) == replicas,
        timeout_s=90,
    )
    await s.converge_to(app, pods)
    return pods


async def ready_pods(s: Scenario, app: str) -> set[str]:
    answer = await s.kube.list(PODS, s.ns, params={"labelSelector": f"app={app}"})
    out = set()
    for pod in answer.get("items", []):
        conditions = pod.get("status", {}).get("conditions") or []
        if not pod["metadata"].get("deletionTimestamp") and any(
            c["type"] == "Ready" and c["status"] == "True" for c in conditions
        ):
            out.add(pod["metadata"]["name"])
    return out


def policy(s: Scenario, target: str, **spec: Any) -> dict[str, Any]:
    doc = s.policy(**spec)
    doc["spec"]["targetRef"] = {"kind": "Service", "name": target}
    return doc


def pod_status(p: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in ((p or {}).get("status") or {}).get("pods") or []}


def status_line(p: dict[str, Any] | None) -> str:
    status = (p or {}).get("status") or {}
    rows = [
        f"{name} {r.get('state')} {r.get('protocol')} p99={r.get('p99Ms')} "
        f"err%={r.get('errorRatePercent')} n={r.get('samples')} {r.get('reason')}"
        for name, r in pod_status(p).items()
    ]
    return f"ejected={status.get('ejectedPods')}; " + "; ".join(rows)


# -- 1. a hung pod ------------------------------------------------------------------------

HUNG_APP = "hung-app"
P99_THRESHOLD_S = 0.5
CLIENT_TIMEOUT_S = 1.0
EVALUATION_INTERVAL = "10s"  # far longer than the bound: only the urgent path meets it


async def test_hung_pod_leaves_within_p99_threshold_plus_one_second(scenario: Scenario) -> None:
    pods = await deploy(scenario, HUNG_APP, 4, "10ms", "http1")
    scenario.apply(
        policy(
            scenario,
            HUNG_APP,
            evaluationInterval=EVALUATION_INTERVAL,
            selection={"mode": "percentage", "percentage": 100},
            circuitBreaker={
                "enabled": True,
                "p99Threshold": f"{P99_THRESHOLD_S * 1000:g}ms",
                "consecutiveViolations": 3,
                "recoveryInterval": "60s",
            },
            dampening={"enabled": False},
        )
    )
    shadow = f"{HUNG_APP}-aviator"
    await scenario.converge_to(shadow, pods, CONVERGE_S)
    load = Load(
        lambda: scenario.cluster.address(scenario.ns, shadow),
        concurrency=8,
        timeout_s=CLIENT_TIMEOUT_S,
    )
    load.start()
    scenario.loads.append(load)
    victim = sorted(pods)[0]
    await reached_every_pod(load, pods)  # latency windows exist before the onset
    onset = time.monotonic()
    scenario.cluster.set_pod_controls(scenario.ns, victim, "latency=3600s")
    try:
        _, took = await wait_for(
            f"the hung {victim} to leave {shadow}",
            lambda: scenario.routed(shadow),
            lambda routed: victim not in routed and len(routed) == 3,
            timeout_s=30,
            poll_s=0.05,
        )
    except AssertionError as err:
        raise AssertionError(f"{err}\n{status_line(await scenario.avp())}") from None
    # wait_for's clock started a moment after the onset; measure from the onset itself.
    removed_after = time.monotonic() - onset
    policy_now = await scenario.avp()  # may not hold this evaluation yet (see below)
    print(
        f"hung pod: {victim} left the slices {removed_after:.2f}s after the onset "
        f"(p99Threshold {P99_THRESHOLD_S:g}s, evaluationInterval {EVALUATION_INTERVAL}); "
        f"{status_line(policy_now)}"
    )
    assert removed_after <= P99_THRESHOLD_S + 1.0, (
        f"{victim} left {removed_after:.2f}s after it hung (polled {took:.2f}s), over "
        f"p99Threshold + 1 s = {P99_THRESHOLD_S + 1.0:g}s; {status_line(policy_now)}"
    )
    # The status is written after the slices: wait for it to give the reason.
    await wait_for(
        f"the status to list {victim} as ejected for its open request",
        scenario.avp,
        lambda p: (
            victim in ((p or {}).get("status") or {}).get("ejectedPods", [])
            and "OpenRequest" in str(pod_status(p).get(victim, {}).get("reason"))
        ),
        timeout_s=15,
    )
    # The clients keep sending: once the proxy follows the slices, none meets the hung pod.
    await scenario.proxy_follows(shadow)
    window = await load.started_window(load.mark(), count=40, timeout_s=30)
    assert window.errors == 0 and victim not in window.by_pod, window


async def reached_every_pod(load: Load, pods: set[str]) -> None:
    """Until every pod of `pods` has answered the load at least once."""

    async def served() -> set[str]:
        return {s.served_by for s in load.samples if s.ok and s.served_by}

    await wait_for("the load to reach every pod", served, lambda got: got >= pods, timeout_s=30)


# -- 2. a pod answering errors ------------------------------------------------------------

ERROR_APP = "error-app"


async def test_pod_answering_errors_is_ejected_and_readmitted(scenario: Scenario) -> None:
    pods = await deploy(scenario, ERROR_APP, 4, "10ms", "http1")
    scenario.apply(
        policy(
            scenario,
            ERROR_APP,
            selection={"mode": "percentage", "percentage": 100},
            circuitBreaker={
                "enabled": True,
                "p99Threshold": "1s",  # far above 10 ms: only the error rule can eject
                "consecutiveViolations": 2,
                "errorRatePercent": 25,
                "errorRateMinResponses": 20,
                "recoveryInterval": "3s",
            },
            dampening={"enabled": False},
        )
    )
    shadow = f"{ERROR_APP}-aviator"
    await scenario.converge_to(shadow, pods, CONVERGE_S)
    load = scenario.load(shadow, concurrency=4)
    victim = sorted(pods)[0]
    await reached_every_pod(load, pods)
    scenario.cluster.set_pod_controls(scenario.ns, victim, "error_rate=0.5")
    try:
        p, ejected_after = await wait_for(
            f"{victim} to be ejected for its errors and leave {shadow}",
            _both(scenario, shadow),
            lambda pr: (
                victim in (pr[0].get("status") or {}).get("ejectedPods", [])
                and victim not in pr[1]
                and len(pr[1]) == 3
            ),
            timeout_s=CONVERGE_S,
        )
    except AssertionError as err:
        raise AssertionError(f"{err}\n{status_line(await scenario.avp())}") from None
    row = pod_status(p[0]).get(victim, {})
    assert "ErrorRate" in str(row.get("reason")), status_line(p[0])
    # The healthy pods were not touched by the rule: their answers are all 200s.
    assert not (set((p[0].get("status") or {}).get("ejectedPods", [])) - {victim})
    await scenario.proxy_follows(shadow)
    window = await load.started_window(load.mark(), count=40, timeout_s=30)
    assert window.errors == 0 and victim not in window.by_pod, window

    scenario.cluster.set_pod_controls(scenario.ns, victim, None)
    try:
        p, readmitted_after = await wait_for(
            f"{victim} to be readmitted to {shadow} once its errors stop",
            _both(scenario, shadow),
            lambda pr: (
                victim not in (pr[0].get("status") or {}).get("ejectedPods", []) and pr[1] == pods
            ),
            timeout_s=CONVERGE_S,
        )
    except AssertionError as err:
        raise AssertionError(f"{err}\n{status_line(await scenario.avp())}") from None
    print(
        f"errors: {victim} (50 % 503s) ejected after {ejected_after:.1f}s, readmitted "
        f"{readmitted_after:.1f}s after recovery; {status_line(p[0])}"
    )


def _both(s: Scenario, service: str) -> Any:
    async def probe() -> tuple[dict[str, Any], set[str]]:
        return (await s.avp()) or {}, await s.routed(service)

    return probe


# -- 3. a gRPC Service, one pod slow ------------------------------------------------------

GRPC_APP = "grpc-app"
SLOW = "500ms"
MEASURE_S = 8.0


async def test_grpc_service_routes_around_its_slow_pod(scenario: Scenario) -> None:
    pods = await deploy(scenario, GRPC_APP, 4, "10ms", "grpc")
    slow = sorted(pods)[0]
    scenario.cluster.set_pod_controls(scenario.ns, slow, f"latency={SLOW}")
    before = await grpc_window(scenario, GRPC_APP)
    assert before.errors == 0, before
    assert slow in before.by_pod, before

    scenario.apply(
        policy(
            scenario,
            GRPC_APP,
            probePath=CALL,
            selection={"mode": "percentage", "percentage": 75},
            routing={"mode": "takeover"},
            dampening={"enabled": False},
        )
    )
    fast = pods - {slow}
    try:
        took = await scenario.converge_to(GRPC_APP, fast, CONVERGE_S)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{status_line(await scenario.avp())}") from None
    after = await grpc_window(scenario, GRPC_APP)
    assert after.errors == 0, after
    assert slow not in after.by_pod, after

    p, _ = await wait_for(
        "the status to show protocol grpc for every pod",
        scenario.avp,
        lambda p: (
            set(pod_status(p)) == pods
            and all(r.get("protocol") == "grpc" for r in pod_status(p).values())
        ),
        timeout_s=30,
    )
    print(
        f"grpc: converged in {took:.1f}s; clients' p99 {before.p99_ms:.0f} -> "
        f"{after.p99_ms:.0f} ms (n {before.count} -> {after.count}); {status_line(p)}"
    )
    assert before.p99_ms is not None and after.p99_ms is not None
    assert before.p99_ms >= 400, before  # the slow pod (500 ms) is in the tail
    assert before.p99_ms / after.p99_ms > 2, (before, after)


async def grpc_window(s: Scenario, service: str) -> Summary:
    """MEASURE_S of 4 gRPC clients each opening a new channel every 5 RPCs."""
    address = s.cluster.address(s.ns, service)
    assert address is not None, f"no address for {service}"
    host, port = address
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    samples = await run_with_new_channels(
        target, workers=4, rpcs_per_channel=5, requests=5000, duration_s=MEASURE_S
    )
    return summarize(_as_sample(r) for r in samples)


def _as_sample(r: RpcSample) -> Sample:
    return Sample(
        at=r.sent_ns / 1e9,
        latency_s=r.latency_s or 0.0,
        ok=r.ok and r.latency_s is not None,
        served_by=r.served_by,
        error=None if r.ok else f"{r.code} {json.dumps(r.details)}",
    )
