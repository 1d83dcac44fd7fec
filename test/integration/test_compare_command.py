"""`kubectl aviator compare SERVICE --selector ...` through kubectl against the real
control plane: once on a policy whose status rows carry known latencies and error rates
(written to the status subresource, no controller running: the figures and the
boundaries are exact), and once end to end, the controller in process measuring pods
whose latency the test agent streams over the real websocket."""

from __future__ import annotations

import json
import time

import pytest
from integration_support import (
    controller_and_agent,
    create_policy,
    create_service_and_pods,
    eventually,
    get_policy,
    kubectl_aviator,
)

from aviator.kube import KubeClient
from aviator.kube.resources import AVIATORPOLICIES, PODS
from aviator.testing.controlplane import ControlPlane

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("crd")]

STABLE = {"web-stable-1": "10.41.0.1", "web-stable-2": "10.41.0.2", "web-stable-3": "10.41.0.3"}
CANARY = {"web-canary-1": "10.41.0.9"}


async def pods_with_versions(kube: KubeClient, ns: str) -> None:
    await create_service_and_pods(kube, ns, "web", {"app": "web"}, {**STABLE, **CANARY})
    for name in CANARY:
        patch = {"metadata": {"labels": {"version": "canary"}}}
        await kube.patch(PODS, name, patch, ns)


def row(name: str, p99: float, samples: int, responses: int, errors: float) -> dict[str, object]:
    return {
        "name": name,
        "state": "active",
        "p99Ms": p99,
        "samples": samples,
        "responses": responses,
        "errorRatePercent": errors,
    }


async def write_status(kube: KubeClient, ns: str, canary_p99: float, canary_errors: float) -> None:
    rows = [row(n, 10.0, 400, 400, 0.5) for n in STABLE]
    rows += [row(n, canary_p99, 200, 200, canary_errors) for n in CANARY]
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = {"status": {"pods": rows, "lastEvaluationTime": now, "source": "ebpf"}}
    await kube.patch(AVIATORPOLICIES, "p", status, ns, subresource="status")


async def compare(cp: ControlPlane, ns: str, *args: str) -> tuple[int, str]:
    done = await kubectl_aviator(
        cp, "compare", "web", "-n", ns, "--selector", "version=canary", *args
    )
    assert not done.stderr.strip() or done.returncode != 0, done.stderr
    return done.returncode, done.stdout


async def test_compare_on_known_status_rows(
    control_plane: ControlPlane, kube: KubeClient, namespace: str
) -> None:
    ns = namespace
    await pods_with_versions(kube, ns)
    code, out = await compare(control_plane, ns)
    assert code == 2 and "NO DATA: no AviatorPolicy targets or routes Service" in out

    await create_policy(kube, ns, "p", "web")
    await write_status(kube, ns, canary_p99=10.8, canary_errors=1.0)
    code, out = await compare(control_plane, ns, "--within", "10")
    assert code == 0, out
    verdict = out.strip().splitlines()[-1]
    assert verdict == (
        "PASS: canary p99 10.80 ms is within 10% of stable p99 10.00 ms (+8.0%); "
        "error rate 1.00% vs 0.50% (allowed +1 points)"
    )
    code, out = await compare(control_plane, ns, "--within", "5")
    assert code == 1, out
    assert out.strip().splitlines()[-1] == (
        "FAIL: canary p99 10.80 ms is 8.0% above stable p99 10.00 ms (allowed: 5%)"
    )

    # The error rate alone fails it, and -o json says so for machines.
    await write_status(kube, ns, canary_p99=10.0, canary_errors=2.0)
    code, out = await compare(control_plane, ns, "-o", "json")
    body = json.loads(out)
    assert code == 1 and body["verdict"] == "fail" and body["exitCode"] == 1
    assert body["policy"] == "p" and body["selector"] == "version=canary"
    assert body["canary"]["pods"] == list(CANARY) and body["stable"]["pods"] == sorted(STABLE)
    assert body["stable"]["samples"] == 1200 and body["p99IncreasePercent"] == 0.0
    assert body["errorRateIncreasePoints"] == pytest.approx(1.5)
    assert body["reasons"] == [
        "canary error rate 2.00% exceeds stable 0.50% by 1.50 points (allowed +1)"
    ]

    # Too few requests for a p99 is no verdict, whatever the margin.
    code, out = await compare(control_plane, ns, "--min-samples", "500", "--within", "1000")
    assert code == 2 and "canary pods have 200 samples" in out
    # A selector that matches none of the Service's pods gives no verdict either.
    none = await kubectl_aviator(
        control_plane, "compare", "web", "-n", ns, "--selector", "version=nope"
    )
    assert none.returncode == 2 and "no canary pods among the Service's pods" in none.stdout


async def test_compare_end_to_end(
    control_plane: ControlPlane, kube: KubeClient, namespace: str
) -> None:
    ns = namespace
    await pods_with_versions(kube, ns)
    async with controller_and_agent(control_plane, kube, ns) as (_, agent):
        slow = {ip: 10.0 for ip in STABLE.values()} | {ip: 30.0 for ip in CANARY.values()}
        agent.latency_ms = slow
        spec = {
            "evaluationInterval": "300ms",
            "selection": {"mode": "topN", "topN": 4},
            "dampening": {"enabled": False},
            "circuitBreaker": {"enabled": False},
        }
        await create_policy(kube, ns, "p", "web", **spec)

        async def canary_p99_is(low: float, high: float) -> bool:
            status = ((await get_policy(kube, ns, "p")) or {}).get("status") or {}
            rows = {r["name"]: r for r in status.get("pods") or []}
            canary = rows.get("web-canary-1", {}).get("p99Ms")
            measured = [rows.get(n, {}).get("p99Ms") for n in STABLE]
            return None not in measured and canary is not None and low < canary < high

        await eventually(lambda: canary_p99_is(25, 35))
        code, out = await compare(control_plane, ns, "-o", "json")
        body = json.loads(out)
        assert code == 1 and body["verdict"] == "fail", body
        assert body["p99IncreasePercent"] > 150
        # no response statuses in what the test agent streams: the note says so
        assert body["notes"] and "error rate not compared" in body["notes"][0]

        agent.latency_ms = {ip: 10.0 for ip in slow}
        await eventually(lambda: canary_p99_is(5, 15))
        code, out = await compare(control_plane, ns)
        assert code == 0, out
        assert out.strip().splitlines()[-1].startswith("PASS: canary p99 ")
