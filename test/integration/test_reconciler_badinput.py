"""Bad input never crashes the controller: specs that slip past an old (schema-less)
CRD become an InvalidSpec condition, a cross-namespace target is refused, and agent
connections with a wrong token or garbage messages are rejected."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from integration_support import (
    TestAgent,
    agent_token,
    condition,
    create_pod,
    eventually,
    get_policy,
    install_crd,
    policy_body,
    running_controller,
    snapshot,
    stream_url,
)

from aviator.api.crd import build_crd
from aviator.controller.app import ControllerApp
from aviator.kube import KubeClient
from aviator.kube.resources import AVIATORPOLICIES, NAMESPACES
from aviator.testing.controlplane import ControlPlane

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def old_crd_plane() -> Iterator[ControlPlane]:
    """A private control plane whose CRD has no schema, like a cluster that kept an
    old CRD: anything goes in, and only the controller can refuse it."""
    with ControlPlane(controllers=False) as cp:
        body = build_crd()
        version = body["spec"]["versions"][0]
        version["schema"] = {
            "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        }
        version["additionalPrinterColumns"] = []
        install_crd(cp, body)
        yield cp


@pytest.fixture
async def old_kube(old_crd_plane: ControlPlane) -> AsyncIterator[KubeClient]:
    async with await KubeClient.load(str(old_crd_plane.kubeconfig)) as client:
        yield client


async def test_invalid_specs_get_invalid_spec_condition(
    old_crd_plane: ControlPlane, old_kube: KubeClient
) -> None:
    kube, ns = old_kube, "bad-specs"
    await kube.create(
        NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
    )
    bad: dict[str, dict[str, Any]] = {
        "unknown-mode": {"targetRef": {"name": "web"}, "selection": {"mode": "fastest"}},
        "no-target": {"evaluationInterval": "1s"},
        "other-namespace": {"targetRef": {"name": "web", "namespace": "kube-system"}},
        "garbage-spec": {"targetRef": "web", "circuitBreaker": [1, 2]},
    }
    async with running_controller(old_crd_plane, ns) as app:
        for name, spec in bad.items():
            body = policy_body(name, "x")
            body["spec"] = spec
            body["metadata"]["namespace"] = ns
            await kube.create(AVIATORPOLICIES, body, ns)
        good = policy_body("good", "missing-service", evaluationInterval="500ms")
        good["metadata"]["namespace"] = ns
        await kube.create(AVIATORPOLICIES, good, ns)

        async def all_reported() -> dict[str, str] | None:
            out = {}
            for name in [*bad, "good"]:
                p = await get_policy(kube, ns, name)
                c = condition(p or {}, "Ready")
                if not c:
                    return None
                out[name] = f"{c['reason']}: {c['message']}"
            return out

        reports = await eventually(all_reported)
        for name in bad:
            assert reports[name].startswith("InvalidSpec: "), reports
        assert "selection.mode" in reports["unknown-mode"]
        assert "targetRef" in reports["no-target"]
        assert "own namespace" in reports["other-namespace"]
        assert reports["good"].startswith("ServiceNotFound"), reports
        assert app.controller.running()
        # Nothing was created for the invalid ones.
        p = await get_policy(kube, ns, "unknown-mode")
        assert p is not None and p["status"]["observedGeneration"] == p["metadata"]["generation"]


async def test_cross_namespace_target_is_refused_by_the_api(
    control_plane: ControlPlane, namespace: str, crd: None
) -> None:
    body = policy_body("p", "web")
    body["metadata"]["namespace"] = namespace
    body["spec"]["targetRef"]["namespace"] = "kube-system"
    result = control_plane.kubectl("apply", "-f", "-", input=json.dumps(body), check=False)
    assert result.returncode != 0
    assert 'unknown field "spec.targetRef.namespace"' in result.stderr


async def _ws_status(url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as s:
        try:
            async with s.ws_connect(url, headers=headers):
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


async def test_agent_with_wrong_token_or_garbage_is_rejected(
    control_plane: ControlPlane, kube: KubeClient, namespace: str, crd: None
) -> None:
    ns = namespace
    good = await agent_token(kube, ns)
    other_sa = await agent_token(kube, ns, "someone-else")
    # The controller takes latency only of pods on the agent token's node.
    for name, ip in (("a", "10.70.0.1"), ("b", "10.70.0.2")):
        await create_pod(kube, ns, name, ip, {"app": "badinput"})
    async with running_controller(control_plane, ns) as app:
        url = stream_url(app)
        assert await _ws_status(url, None) == 401
        assert await _ws_status(url, "not-a-token") == 401
        assert await _ws_status(url, good[:-4] + "AAAA") == 401
        assert await _ws_status(url, other_sa) == 403

        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(url, headers={"Authorization": f"Bearer {good}"}) as ws,
        ):
            for garbage in (
                "{nope",
                json.dumps({"v": 99, "kind": "snapshot"}),
                json.dumps(_bad_snapshot()),
                "x" * 10000,
            ):
                await ws.send_str(garbage)
                answer = await asyncio.wait_for(ws.receive(), 5)
                assert answer.type == aiohttp.WSMsgType.TEXT
                assert json.loads(answer.data)["kind"] == "error"
            # The connection survived: a valid snapshot still lands in the store.
            await ws.send_str(snapshot({"10.70.0.1": 10.0}))

            async def ingested() -> bool:
                return app.store.estimate("10.70.0.1", app.now()) is not None

            await eventually(ingested)
        await _healthy(app)
        # A regular agent still works afterwards.
        async with TestAgent(url, good) as agent:
            agent.latency_ms = {"10.70.0.2": 5.0}

            async def second() -> bool:
                return app.store.estimate("10.70.0.2", app.now()) is not None

            await eventually(second)


def _bad_snapshot() -> dict[str, Any]:
    snap = json.loads(snapshot({"10.70.0.9": 1.0}))
    bad = copy.deepcopy(snap)
    bad["endpoints"][0]["hist"] = {"99999": -5}
    return dict(bad)


def test_snapshot_helper_is_valid_v1() -> None:
    from aviator.latency.schema import parse_snapshot

    snap = parse_snapshot(snapshot({"10.0.0.1": 10.0}))
    assert snap.endpoints[0].hist.count == 200


async def _healthy(app: ControllerApp) -> None:
    async with aiohttp.ClientSession() as s:
        for path in ("/healthz", "/readyz", "/metrics"):
            async with s.get(f"http://127.0.0.1:{app.http_port}{path}") as r:
                assert r.status == 200, path
                if path == "/metrics":
                    text = await r.text()
                    assert "aviator_stream_rejected_total" in text
                    assert "aviator_latency_store_endpoints" in text
                    assert "workqueue_depth" in text
