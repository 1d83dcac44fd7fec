"""Attacks on the latency stream, against the real receiver (an in-process controller)
and the real control plane: what a holder of a valid agent token, or of none, can do
to the controller, with a figure for each (printed as `FIGURE name: value`).

The tokens are those a real agent has: bound to a pod of the agent's ServiceAccount
on its node, as the kubelet mints the DaemonSet's projected token.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest
from integration_support import (
    NODE,
    TestAgent,
    create_pod,
    eventually,
    pod_token,
    running_controller,
    snapshot,
    stream_url,
)
from prometheus_client import REGISTRY

from aviator.kube import KubeClient
from aviator.testing.controlplane import ControlPlane

pytestmark = pytest.mark.integration

OTHER_NODE = "attack-node-b"


def figure(name: str, value: float, unit: str) -> None:
    print(f"FIGURE {name}: {value:.3f} {unit}")


def refused(reason: str) -> float:
    value = REGISTRY.get_sample_value("aviator_stream_endpoints_refused_total", {"reason": reason})
    return value or 0.0


async def reply(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive_json(timeout=10)
    assert isinstance(msg, dict)
    return msg


async def test_a_forged_report_cannot_change_another_nodes_pod(
    control_plane: ControlPlane, kube: KubeClient, namespace: str, crd: None
) -> None:
    """The agent of node B reports node A's slow pod as instant, under its own node's
    name and under A's: the pod's latency stays what A's agent measures."""
    ns = namespace
    await create_pod(kube, ns, "victim", "10.80.0.1", {"app": "victim"}, node=NODE)
    await create_pod(kube, ns, "b-pod", "10.80.1.1", {"app": "b"}, node=OTHER_NODE)
    token_a = await pod_token(kube, ns, NODE)
    token_b = await pod_token(kube, ns, OTHER_NODE)
    async with running_controller(control_plane, ns) as app:
        url = stream_url(app)

        async def victim_p99() -> float | None:
            est = app.store.estimate("10.80.0.1", app.now())
            return est.p99_ms if est is not None and est.p99_ms > 3000 else None

        async with TestAgent(url, token_a) as agent_a:
            agent_a.latency_ms = {"10.80.0.1": 3700.0}
            await eventually(victim_p99)
            before = refused("other_node")
            async with (
                aiohttp.ClientSession() as http,
                http.ws_connect(url, headers={"Authorization": f"Bearer {token_b}"}) as ws,
            ):
                # Claiming to be node A: the whole snapshot is refused.
                started = time.monotonic()
                await ws.send_str(snapshot({"10.80.0.1": 0.0}, node=NODE))
                answer = await reply(ws)
                figure("forged node claim refused in", (time.monotonic() - started) * 1000, "ms")
                assert "is not the token's node" in answer["error"]
                # As itself, about A's pod (with its own pod, which is fine): refused.
                for _ in range(10):
                    await ws.send_str(
                        snapshot({"10.80.0.1": 0.0, "10.80.1.1": 5.0}, node=OTHER_NODE)
                    )
                answer = await reply(ws)
                assert answer["error"] == "refused: other_node 1"

            async def b_pod_measured() -> bool:
                return app.store.estimate("10.80.1.1", app.now()) is not None

            await eventually(b_pod_measured)
            assert refused("other_node") - before == 10
            est = app.store.estimate("10.80.0.1", app.now())
            assert est is not None and est.p50_ms > 3000 and est.p99_ms > 3000
            figure("victim p99 after 11 forged reports", est.p99_ms, "ms")
