"""Flap resistance: EndpointSlice writes while every pod's latency jitters ±15 % around
the same mean, with and without dampening, side by side in one run.

Ten pods (API objects with a hand-written Ready status) behind two Services with the
same selector; two policies, identical but for `dampening.enabled`, route one Service
each (shadow mode, topN 5). The real `aviator controller` process evaluates both every
250 ms (time compressed: 240 evaluations stand for 20 minutes at the default 5 s;
quick: 40). One simulated agent reports every 250 ms over the real websocket; in each
report every pod's latency is 10 ms * (1 + u), u uniform in [-0.15, +0.15], drawn
afresh (seeded). Both policies see exactly the same data; we count the writes the API
server accepted to each shadow Service's EndpointSlices (a watch per Service), and
their policies' status writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import uvloop

from aviator.kube import KubeClient
from aviator.kube.resources import AVIATORPOLICIES, ENDPOINTSLICES, PODS, SERVICES
from bench.common import (
    ControllerProcess,
    Row,
    SimAgent,
    WriteWatch,
    agent_token,
    bench_node,
    create_ready_pods,
    create_service,
    new_namespace,
    pod_ip,
    policy_body,
    row,
    shared_control_plane,
    snapshot_json,
)

NAME = "flap"
PODS_N = 10
MEAN_MS = 10.0
JITTER = 0.15
INTERVAL_S = 0.25
VARIANTS = {"dampening on": True, "dampening off": False}


def run(quick: bool) -> list[Row]:
    cp = shared_control_plane()
    evaluations = 40 if quick else 240
    return uvloop.run(_run(cp.kubeconfig, evaluations))


async def _run(kubeconfig: object, evaluations: int) -> list[Row]:
    kube = await KubeClient.load(str(kubeconfig))
    controller: ControllerProcess | None = None
    ns = ""
    try:
        ns = await new_namespace(kube, "flap")
        token = await agent_token(kube, ns)
        pods = [(f"p-{i}", pod_ip(i, base=60)) for i in range(PODS_N)]
        await create_ready_pods(kube, ns, pods, {"app": "flap"})
        services = {label: f"svc-{i}" for i, label in enumerate(VARIANTS)}
        for svc in services.values():
            await create_service(kube, ns, svc, {"app": "flap"})
        # The store's window spans 4 reports: estimates move with the jitter.
        controller = ControllerProcess(
            kubeconfig,  # type: ignore[arg-type]
            ns,
            window_s=4 * INTERVAL_S,
            stale_after_s=10 * INTERVAL_S,
        )
        await controller.wait_ready()
        rng = random.Random(15)
        async with SimAgent(controller.url, token) as agent:

            async def report() -> None:
                while True:
                    jittered = [
                        (ip, MEAN_MS * (1 + rng.uniform(-JITTER, JITTER))) for _, ip in pods
                    ]
                    await agent.send(snapshot_json(bench_node(0), jittered, window_s=INTERVAL_S))
                    await asyncio.sleep(INTERVAL_S)

            reporting = asyncio.create_task(report())
            try:
                for i, (label, damp) in enumerate(VARIANTS.items()):
                    await kube.create(
                        AVIATORPOLICIES,
                        policy_body(
                            f"pol-{i}",
                            services[label],
                            evaluationInterval=f"{int(INTERVAL_S * 1000)}ms",
                            selection={"mode": "topN", "topN": PODS_N // 2},
                            dampening={
                                "enabled": damp,
                                "thresholdPercent": 20,
                                "consecutiveIntervals": 3,
                            },
                        ),
                        ns,
                    )
                await _settled(kube, ns, len(VARIANTS))
                await asyncio.sleep(4 * INTERVAL_S)  # first slices and status writes land
                watches = {}
                for i, label in enumerate(VARIANTS):
                    shadow = f"{services[label]}-aviator"
                    watches[label] = (
                        await WriteWatch(
                            kube,
                            ns,
                            [ENDPOINTSLICES],
                            label_selector=f"kubernetes.io/service-name={shadow}",
                        ).start(),
                        await WriteWatch(
                            kube, ns, [AVIATORPOLICIES], field_selector=f"metadata.name=pol-{i}"
                        ).start(),
                    )
                await asyncio.sleep(0.3)  # the watches are open
                start = time.monotonic()
                await asyncio.sleep(evaluations * INTERVAL_S)
                seconds = time.monotonic() - start
                await asyncio.sleep(0.5)  # late events of the window
                counts = {}
                for label, (slices, status) in watches.items():
                    await slices.stop()
                    await status.stop()
                    counts[label] = (slices.total(), status.total())
            finally:
                reporting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporting
        return _rows(counts, seconds, evaluations)
    finally:
        # Clean up for the next user of the shared control plane; a failure here must
        # not hide the figures.
        if controller is not None:
            with contextlib.suppress(Exception):
                await kube.request("DELETE", AVIATORPOLICIES.path(ns))
                await _gone(kube, ns)
            controller.stop()
        if ns:
            for res in (PODS, SERVICES, ENDPOINTSLICES):
                with contextlib.suppress(Exception):
                    await kube.request(
                        "DELETE", res.path(ns), params={"gracePeriodSeconds": "0"}, timeout_s=120
                    )
        await kube.close()


async def _settled(kube: KubeClient, ns: str, policies: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        items = (await kube.list(AVIATORPOLICIES, ns)).get("items") or []
        ready = [p for p in items if (p.get("status") or {}).get("activePods") == PODS_N // 2]
        if len(ready) == policies:
            return
        await asyncio.sleep(0.25)
    raise RuntimeError("flap: policies did not reach their first active set")


async def _gone(kube: KubeClient, ns: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not (await kube.list(AVIATORPOLICIES, ns)).get("items"):
            return
        await asyncio.sleep(0.25)


def _rows(counts: dict[str, tuple[int, int]], seconds: float, evaluations: int) -> list[Row]:
    on_slices, on_status = counts["dampening on"]
    off_slices, off_status = counts["dampening off"]
    what = (
        f"{evaluations} evaluations of {INTERVAL_S * 1000:.0f} ms ({seconds:.0f} s), "
        f"{PODS_N} pods at {MEAN_MS:g} ms ± {JITTER:.0%}, topN {PODS_N // 2}"
    )
    return [
        row(
            NAME,
            "EndpointSlice writes, dampening on",
            float(on_slices),
            "writes",
            goal="0",
            note=f"{what}; {on_status} policy writes",
        ),
        row(
            NAME,
            "EndpointSlice writes, dampening off",
            float(off_slices),
            "writes",
            note=f"same data, same run; {off_status} policy writes",
        ),
        row(
            NAME,
            "slice writes per evaluation, dampening off",
            off_slices / evaluations,
            "writes/eval",
            note="how often plain topN reshuffles equal pods",
        ),
    ]
