"""The breaker's newer signals against the real control plane, fed through the real
agent stream: a pod with a request open longer than p99Threshold leaves the slices at
once whatever the evaluation interval, and a pod answering 50 % errors is ejected by
the error rule and readmitted when its windows recover."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from integration_support import (
    NODE,
    agent_token,
    create_policy,
    create_service_and_pods,
    endpoint_pods,
    eventually,
    get_policy,
    running_controller,
    slices_of,
    stream_url,
)

from aviator.kube import KubeClient
from aviator.kube.resources import EVENTS
from aviator.latency.histogram import Histogram
from aviator.latency.schema import EndpointWindow, Snapshot, encode_snapshot
from aviator.testing.controlplane import ControlPlane

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("crd")]

LABELS = {"app": "web"}
IPS = {"a": "10.51.0.1", "b": "10.51.0.2", "c": "10.51.0.3", "d": "10.51.0.4"}
SAMPLES = 200


@dataclass
class Pod:
    """What the synthetic agent reports for one pod in every window."""

    ms: float = 10.0
    errors: int = 0  # of SAMPLES responses, all with a status
    open_us: int = 0


def window(ip: str, pod: Pod) -> EndpointWindow:
    us = int(pod.ms * 1000)
    hist = Histogram()
    hist.record(us, SAMPLES)
    return EndpointWindow(
        ip, 8080, "server", None, hist, SAMPLES, us * SAMPLES, us, 1 if pod.open_us else 0, 0,
        protocol="http1", statuses=SAMPLES, errors=pod.errors, oldest_open_us=pod.open_us,
    )  # fmt: skip


class SyntheticAgent:
    """Streams every pod's window each `period_s` over the real websocket, and one
    snapshot at once on `report_now()` (as the agent's urgent report does)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, period_s: float = 0.2) -> None:
        self.ws = ws
        self.period_s = period_s
        self.pods = {name: Pod() for name in IPS}

    async def report_now(self) -> None:
        eps = tuple(window(IPS[n], p) for n, p in self.pods.items())
        snap = Snapshot(node=NODE, source="ebpf", time=time.time(), window_s=0.2, endpoints=eps)
        await self.ws.send_str(encode_snapshot(snap))

    async def run(self) -> None:
        while True:
            await self.report_now()
            await asyncio.sleep(self.period_s)  # the agent's report cadence


@contextlib.asynccontextmanager
async def streaming(url: str, token: str) -> AsyncIterator[SyntheticAgent]:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, headers={"Authorization": f"Bearer {token}"}) as ws,
    ):
        agent = SyntheticAgent(ws)
        task = asyncio.create_task(agent.run())
        try:
            yield agent
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def routed(kube: KubeClient, ns: str) -> list[str]:
    return endpoint_pods(await slices_of(kube, ns, "web-aviator", ours=True))


async def test_a_hung_pod_leaves_within_p99_threshold_plus_one_second(
    control_plane: ControlPlane, kube: KubeClient, namespace: str
) -> None:
    ns = namespace
    await create_service_and_pods(kube, ns, "web", LABELS, IPS)
    token = await agent_token(kube, ns)
    async with (
        running_controller(control_plane, ns) as app,
        streaming(stream_url(app), token) as agent,
    ):
        await create_policy(
            kube,
            ns,
            "p",
            "web",
            evaluationInterval="30s",
            selection={"mode": "percentage", "percentage": 100},
            dampening={"enabled": False},
            circuitBreaker={"enabled": True, "p99Threshold": "500ms", "consecutiveViolations": 3},
        )

        async def all_four() -> bool:
            return await routed(kube, ns) == sorted(IPS)

        await eventually(all_four)
        queue, key = app.controller.queue, f"{ns}/p"

        async def settled() -> bool:
            # The status (the reconcile's last write) is there and the policy is neither
            # queued nor being reconciled: only its 30 s requeue waits. (A reconcile
            # caused by our own writes would also see the stall; this test is about
            # the controller acting on the report itself.)
            st = ((await get_policy(kube, ns, "p")) or {}).get("status") or {}
            return (
                st.get("activePods") == 4
                and key not in queue.pending()
                and key not in queue.processing()
            )

        await eventually(settled, interval=0.05)
        # The first evaluation is done; the next regular one is 30 s away. Pod c hangs:
        # the agent, looking every 0.2 s, reports its oldest open request once it is
        # past the threshold (here 0.6 s after the hang began).
        hang_began = time.monotonic() - 0.6
        agent.pods["c"] = Pod(open_us=600_000)
        await agent.report_now()

        async def c_gone() -> bool:
            return "c" not in await routed(kube, ns)

        await eventually(c_gone, within=10.0, interval=0.02)
        took = time.monotonic() - hang_began
        print(f"hung pod out of the slices {took:.2f} s after it stopped answering")
        assert took <= 0.5 + 1.0

        async def c_row() -> dict[str, Any] | None:
            # The status is written after the slices.
            st = ((await get_policy(kube, ns, "p")) or {}).get("status") or {}
            row = next((r for r in st.get("pods") or [] if r["name"] == "c"), None)
            return row if row and row["state"] == "ejected" else None

        row = await eventually(c_row)
        assert row["reason"] == "OpenRequestAboveThreshold" and row["oldestOpenMs"] == 600.0
        assert app.stalls.enqueued >= 1


async def test_a_pod_answering_half_errors_is_ejected_and_readmitted(
    control_plane: ControlPlane, kube: KubeClient, namespace: str
) -> None:
    ns = namespace
    await create_service_and_pods(kube, ns, "web", LABELS, IPS)
    token = await agent_token(kube, ns)
    async with (
        running_controller(control_plane, ns) as app,
        streaming(stream_url(app), token) as agent,
    ):
        agent.pods["b"] = Pod(errors=SAMPLES // 2)  # fast, and 50 % 503s
        await create_policy(
            kube,
            ns,
            "p",
            "web",
            evaluationInterval="500ms",
            selection={"mode": "percentage", "percentage": 100},
            dampening={"enabled": False},
            circuitBreaker={
                "enabled": True,
                "p99Threshold": "500ms",
                "consecutiveViolations": 2,
                "recoveryInterval": "1s",
                "errorRatePercent": 25,
            },
        )

        async def ejected() -> dict[str, Any] | None:
            st = ((await get_policy(kube, ns, "p")) or {}).get("status") or {}
            return st if st.get("ejectedPods") == ["b"] else None

        st = await eventually(ejected)
        row = next(r for r in st["pods"] if r["name"] == "b")
        assert (row["reason"], row["errorRatePercent"], row["protocol"]) == (
            "ErrorRateAboveThreshold",
            50.0,
            "http1",
        )
        assert row["p99Ms"] < 100  # fast: only the error rule can have ejected it
        assert "b" not in await routed(kube, ns)

        async def events(reason: str) -> list[dict[str, Any]]:
            items = (await kube.list(EVENTS, ns)).get("items") or []
            return [e for e in items if e.get("reason") == reason]

        (ev,) = await eventually(lambda: events("PodEjected"))
        assert "50.0 % errors of" in ev["note"]

        agent.pods["b"] = Pod()  # recovered
        assert await eventually(lambda: events("PodReadmitted"), within=30)

        async def back() -> bool:
            return "b" in await routed(kube, ns)

        await eventually(back)
