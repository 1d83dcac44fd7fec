"""Takeover that never fights, against the real control plane: a Service restored the
way GitOps tools and people restore it (full replace, client-side apply, server-side
apply) is not taken over again until the policy asks (counting the writes), and a
controller that dies between the takeover's steps leaves the selector restorable."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from integration_support import (
    condition,
    create_pod,
    create_policy,
    eventually,
    get_policy,
    running_controller,
    slices_of,
    watching,
)

from aviator.kube import KubeClient
from aviator.kube.marks import ANNOTATION_ORIGINAL_SELECTOR, ANNOTATION_RETAKE
from aviator.kube.objects import JSON
from aviator.kube.resources import AVIATORPOLICIES, SERVICES
from aviator.runtime.writer import Write, Writer
from aviator.testing.controlplane import ControlPlane

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("crd")]

LABELS = {"app": "web"}
SPEC = {
    "routing": {"mode": "takeover"},
    "evaluationInterval": "300ms",
    "selection": {"mode": "percentage", "percentage": 100},
}
QUIET_S = 2.0  # several evaluation intervals


def manifest(ns: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {
                "selector": LABELS,
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
            },
        }
    )


# How each tool first creates the Service and later puts its manifest back.
TOOLS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "replace": (("create", "-f", "-"), ("replace", "-f", "-")),
    "client-side-apply": (("apply", "-f", "-"), ("apply", "-f", "-")),
    "server-side-apply": (
        ("apply", "--server-side", "--field-manager=gitops", "-f", "-"),
        ("apply", "--server-side", "--field-manager=gitops", "--force-conflicts", "-f", "-"),
    ),
}


@contextlib.asynccontextmanager
async def service_writes(kube: KubeClient, ns: str) -> AsyncIterator[list[JSON]]:
    """Every change of Service `web` while inside the block."""
    listed = await kube.list(SERVICES, ns)
    seen: list[JSON] = []

    async def watch() -> None:
        params = {
            "fieldSelector": "metadata.name=web",
            "resourceVersion": listed["metadata"]["resourceVersion"],
        }
        async for ev in kube.watch(SERVICES.path(ns), params):
            if ev.get("type") == "MODIFIED":
                seen.append(ev["object"])

    async with watching(watch()):
        yield seen


async def selector_of(kube: KubeClient, ns: str) -> dict[str, str] | None:
    svc = await kube.get(SERVICES, "web", ns)
    selector = svc["spec"].get("selector")
    return dict(selector) if selector else None


def taken_over(kube: KubeClient, ns: str) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        ours = await slices_of(kube, ns, "web", ours=True)
        return await selector_of(kube, ns) is None and bool(ours)

    return probe


async def restored_reported(kube: KubeClient, ns: str) -> bool:
    policy = await get_policy(kube, ns, "p") or {}
    phase = ((policy.get("status") or {}).get("takeover") or {}).get("phase")
    return phase == "Restored" and "got its selector back" in condition(policy, "Degraded").get(
        "message", ""
    )


@pytest.mark.parametrize("tool", list(TOOLS))
async def test_a_service_restored_by_gitops_is_not_taken_over_again(
    control_plane: ControlPlane, kube: KubeClient, namespace: str, tool: str
) -> None:
    ns = namespace
    create, restore = TOOLS[tool]
    control_plane.kubectl(*create, "-n", ns, input=manifest(ns))
    await create_pod(kube, ns, "web-1", "10.70.0.1", LABELS)
    await create_pod(kube, ns, "web-2", "10.70.0.2", LABELS)
    async with running_controller(control_plane, ns):
        await create_policy(kube, ns, "p", "web", **SPEC)
        await eventually(taken_over(kube, ns))
        async with service_writes(kube, ns) as writes:
            control_plane.kubectl(*restore, "-n", ns, input=manifest(ns))  # self-heal
            await eventually(lambda: restored_reported(kube, ns))
            await asyncio.sleep(QUIET_S)  # asserting an absence: waiting is the point
        assert await selector_of(kube, ns) == LABELS
        assert len(writes) == 1, [w["metadata"].get("managedFields") for w in writes]
        policy = await get_policy(kube, ns, "p")
        assert policy is not None and policy["status"]["takeover"]["phase"] == "Restored"
        assert ANNOTATION_RETAKE in condition(policy, "Degraded")["message"]

        # The policy's owner asks for routing back: one takeover, then quiet again.
        async with service_writes(kube, ns) as writes:
            control_plane.kubectl(
                "annotate", "avp", "p", "-n", ns, f"{ANNOTATION_RETAKE}=1", "--overwrite"
            )
            await eventually(taken_over(kube, ns))
            await asyncio.sleep(QUIET_S)
        assert len(writes) == 1

        await kube.delete(AVIATORPOLICIES, "p", ns)

        async def given_back() -> bool:
            return await get_policy(kube, ns, "p") is None and await selector_of(kube, ns) == LABELS

        await eventually(given_back)


class DyingWriter(Writer):
    """Writes like `inner` until `fatal` matches a write; then (after that write, when
    `after`) never returns again, like a process killed at that instant."""

    def __init__(self, inner: Writer, fatal: Callable[[Write], bool], *, after: bool) -> None:
        super().__init__(inner.client, inner.metrics)
        self.fatal, self.after = fatal, after
        self.died = asyncio.Event()

    async def apply(self, write: Write) -> JSON | None:
        if self.died.is_set():
            await asyncio.Event().wait()
        if self.fatal(write):
            if self.after:
                await super().apply(write)
            self.died.set()
            await asyncio.Event().wait()
        return await super().apply(write)


def is_takeover_patch(write: Write) -> bool:
    return write.resource.kind == "Service" and write.note == "taken over"


@pytest.mark.parametrize("after", [False, True], ids=["before-service-patch", "after"])
async def test_a_crash_between_takeover_steps_leaves_the_selector_restorable(
    control_plane: ControlPlane, kube: KubeClient, namespace: str, after: bool
) -> None:
    ns = namespace
    control_plane.kubectl("create", "-f", "-", "-n", ns, input=manifest(ns))
    await create_pod(kube, ns, "web-1", "10.71.0.1", LABELS)
    async with running_controller(control_plane, ns) as first:
        dying = DyingWriter(first.reconciler.writer, is_takeover_patch, after=after)
        first.reconciler.writer = dying
        await create_policy(kube, ns, "p", "web", **SPEC)
        await asyncio.wait_for(dying.died.wait(), 30)
    # The process is gone. The selector is in the policy's record (and, after the
    # patch, in the Service's annotation).
    policy = await get_policy(kube, ns, "p")
    assert policy is not None
    assert policy["status"]["takeover"]["originalSelector"] == LABELS
    assert (await selector_of(kube, ns) is None) == after
    if after:
        # Someone corrupts the annotation meanwhile: the record still knows.
        bad = {"metadata": {"annotations": {ANNOTATION_ORIGINAL_SELECTOR: "{oops"}}}
        await kube.patch(SERVICES, "web", bad, ns)
    async with running_controller(control_plane, ns):
        await eventually(taken_over(kube, ns))

        async def confirmed() -> bool:
            p = await get_policy(kube, ns, "p")
            return ((p or {}).get("status") or {}).get("takeover", {}).get("phase") == "TakenOver"

        await eventually(confirmed)
        await kube.delete(AVIATORPOLICIES, "p", ns)

        async def given_back() -> bool:
            return await get_policy(kube, ns, "p") is None and await selector_of(kube, ns) == LABELS

        await eventually(given_back)
    svc = await kube.get(SERVICES, "web", ns)
    assert ANNOTATION_ORIGINAL_SELECTOR not in (svc["metadata"].get("annotations") or {})
