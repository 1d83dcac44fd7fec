"""Routing decisions for one policy: which Service it routes, in which mode, and the
writes that get the Services there. Pure: a `View` in, `Routing` and `Write`s out.

- Conflict: another live policy that routes the same Service and is older (creation
  time, then name) wins; the later one owns nothing.
- Shadow mode: our selector-less Service `<target>-aviator` is created or patched to
  mirror the target's ports; a Service of that name that is not ours blocks the policy.
- Takeover mode: the target's selector is moved into an annotation (only after our
  slices are published, so the Service never has zero endpoints, and after the
  policy's takeover record, so the selector is always kept somewhere: see
  `aviator.reconcilers.takeover`); a Service taken over by a policy that no longer
  exists is adopted; a Service whose selector came back, by any means, is reported
  (`SelectorRestored`) and not taken over again in the same round. Without a selector
  Kubernetes stops updating, but does not delete, its own slices and Endpoints: the
  takeover deletes the slices whenever they appear, and the Endpoints until a delete
  finds it gone.
- Release: what a policy made and no longer needs is undone, selectors restored FIRST
  (from the annotation, else the record), then our shadow Services and slices deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from aviator.kube import marks
from aviator.kube.objects import JSON
from aviator.kube.resources import AVIATORPOLICIES, ENDPOINTSLICES, SERVICES, Resource
from aviator.reconcilers.mapping import routed_service
from aviator.reconcilers.services import (
    desired_shadow_service,
    restore_patch,
    shadow_service_patch,
    takeover_patch,
)
from aviator.reconcilers.status import (
    REASON_CONFLICT,
    REASON_INVALID_SPEC,
    REASON_SELECTOR_RESTORED,
    Problem,
)
from aviator.reconcilers.takeover import (
    PENDING,
    RESTORED,
    TAKEN_OVER,
    Record,
    Standing,
    round_of,
    standing,
)
from aviator.reconcilers.view import View
from aviator.runtime.writer import Write

ENDPOINTS = Resource("", "v1", "endpoints", "Endpoints")


@dataclass
class Routing:
    """What the routing step found: problems, whether it blocks selection, writes to
    make before the slices, and what to do after them."""

    problems: list[Problem] = field(default_factory=list)
    blocked: bool = False
    prepare: list[Write] = field(default_factory=list)  # before the slices
    take_over: bool = False  # remove the selector now (after our slices are published)
    taken: bool = False  # taken over earlier and still ours
    record: Record | None = None  # status.takeover once this reconcile's writes are done


def _created(policy: JSON) -> tuple[str, str]:
    meta = policy.get("metadata", {})
    return str(meta.get("creationTimestamp", "")), str(meta.get("name", ""))


def conflicting_policy(policy: JSON, rivals: Sequence[JSON]) -> str | None:
    """The name of the older live policy among those routing the same Service."""
    mine = _created(policy)
    uid = policy["metadata"].get("uid")
    for other in rivals:
        ometa = other.get("metadata", {})
        if ometa.get("uid") == uid or ometa.get("deletionTimestamp"):
            continue
        if _created(other) < mine:
            return str(ometa.get("name"))
    return None


def release(view: View, record: Record | None, keep_routed: str | None = None) -> list[Write]:
    """Undo what the policy made, except what routes `keep_routed` in its current
    mode: selectors restored first, then our shadow Services and slices deleted."""
    meta = view.policy["metadata"]
    ns, name, uid = meta["namespace"], meta["name"], meta.get("uid", "")
    mode_takeover = keep_routed is not None and routed_service(view.policy) == keep_routed
    services = {svc["metadata"]["name"]: svc for svc in view.taken_over}
    if view.recorded is not None and record is not None and record.phase != RESTORED:
        services.setdefault(record.service, view.recorded)
    writes: list[Write] = []
    for svc_name, svc in sorted(services.items()):
        if mode_takeover and svc_name == keep_routed:
            continue
        recorded = record.selector if record is not None and record.service == svc_name else None
        restore = restore_patch(svc, name, recorded)
        if restore is not None and restore.patch:
            writes.append(
                Write(
                    "patch",
                    SERVICES,
                    ns,
                    svc_name,
                    restore.patch,
                    missing_ok=True,
                    note=f"given back (selector restored: {restore.restores_selector})",
                )
            )
    for svc in view.labelled_services:
        svc_name = svc["metadata"]["name"]
        if svc_name == keep_routed or not marks.is_owned_by(svc, uid):
            continue
        writes.append(Write("delete", SERVICES, ns, svc_name, missing_ok=True))
    for sl in view.slices:
        labels = sl["metadata"].get("labels") or {}
        if keep_routed is not None and labels.get(marks.LABEL_SERVICE_NAME) == keep_routed:
            continue
        writes.append(Write("delete", ENDPOINTSLICES, ns, sl["metadata"]["name"], missing_ok=True))
    return writes


def decide(
    view: View, target: JSON, record: Record | None = None, *, endpoints_gone: bool = False
) -> Routing:
    """Routing for a policy whose spec is valid and whose target Service exists.

    `record`: the policy's takeover record; `endpoints_gone`: the previous reconcile's
    delete of the target's Endpoints found it gone."""
    assert view.parsed is not None
    parsed = view.parsed
    meta = view.policy["metadata"]
    ns, name, uid = meta["namespace"], meta["name"], str(meta.get("uid", ""))
    routing = Routing()
    if parsed.mode == "shadow":
        if parsed.routed_service == parsed.target:
            routing.problems.append(
                Problem(
                    REASON_INVALID_SPEC,
                    "spec.routing.serviceName must differ from spec.targetRef.name",
                )
            )
            routing.blocked = True
            return routing
        desired = desired_shadow_service(target, parsed.routed_service, name, uid)
        observed = view.routed
        if observed is None:
            # A conflict here means it exists and the cache has not seen it, maybe
            # someone else's: the writer ends the reconcile and we look again.
            routing.prepare.append(Write("create", SERVICES, ns, parsed.routed_service, desired))
        elif not marks.is_owned_by(observed, uid):
            routing.problems.append(
                Problem(
                    REASON_CONFLICT,
                    f"Service {ns}/{parsed.routed_service} exists and is not managed by "
                    "this policy; set spec.routing.serviceName to another name",
                )
            )
            routing.blocked = True
        else:
            patch = shadow_service_patch(observed, desired)
            if patch is not None:
                routing.prepare.append(Write("patch", SERVICES, ns, parsed.routed_service, patch))
        return routing

    found = standing(target, name, record, round_of(view.policy), endpoints_gone=endpoints_gone)
    routing.record = found.record
    state = found.standing
    if state is Standing.OTHER_POLICY:
        holder = (target["metadata"].get("annotations") or {}).get(marks.ANNOTATION_TAKEN_OVER_BY)
        if view.holder is not None:
            routing.problems.append(
                Problem(REASON_CONFLICT, f"Service {ns}/{parsed.target} is taken over by {holder}")
            )
            routing.blocked = True
            return routing
        # The policy that took it over is gone without cleaning up: adopt it.
        adopt = {"metadata": {"annotations": {marks.ANNOTATION_TAKEN_OVER_BY: name}}}
        routing.prepare.append(
            Write("patch", SERVICES, ns, parsed.target, adopt, note=f"adopted from {holder}")
        )
        state = Standing.TAKEN
        gen, retake = round_of(view.policy)
        routing.record = (
            Record(parsed.target, found.selector, TAKEN_OVER, gen, retake)
            if found.selector
            else None
        )
    if state is Standing.TAKE:
        routing.take_over = True
        # What the status says once the Service patch is done (PENDING until then).
        routing.record = replace(found.record, phase=TAKEN_OVER) if found.record else None
    elif state is Standing.TAKEN:
        routing.taken = True
    elif state is Standing.RESTORED:
        retake = (
            f"kubectl annotate avp {name} -n {ns} {marks.ANNOTATION_RETAKE}=<new value> --overwrite"
        )
        routing.problems.append(
            Problem(
                REASON_SELECTOR_RESTORED,
                f"Service {ns}/{parsed.target} got its selector back while taken over "
                "(by a patch, an apply or replace, or a GitOps sync); its built-in slices "
                "route to every pod again. Aviator does not take it over again for this "
                "generation of the policy: to hand routing back to Aviator, change the "
                f"policy's spec or run `{retake}`; to stop, delete the policy",
            )
        )
    return routing


def after_slices(view: View, target: JSON, routing: Routing) -> list[Write]:
    """Writes that follow the slices: the takeover itself (its record in the policy's
    status first), then the built-in slices and the Endpoints it leaves behind (the
    Endpoints until a delete finds it gone: the mirroring controller would turn it
    into slices again)."""
    assert view.parsed is not None
    writes: list[Write] = []
    meta = target["metadata"]
    ns, svc = meta["namespace"], meta["name"]
    policy = view.policy["metadata"]["name"]
    if routing.take_over and routing.record is not None:
        pending = {"status": {"takeover": replace(routing.record, phase=PENDING).to_json()}}
        writes.append(Write("patch", AVIATORPOLICIES, ns, policy, pending, subresource="status"))
        patch = takeover_patch(target, policy)
        patch["metadata"]["resourceVersion"] = meta.get("resourceVersion")
        writes.append(Write("patch", SERVICES, ns, svc, patch, note="taken over"))
    if view.parsed.mode == "takeover" and (routing.take_over or routing.taken):
        for sl in view.builtin_slices:
            writes.append(
                Write("delete", ENDPOINTSLICES, ns, sl["metadata"]["name"], missing_ok=True)
            )
        if routing.record is None or not routing.record.endpoints_gone:
            writes.append(Write("delete", ENDPOINTS, ns, svc, missing_ok=True, forbidden_ok=True))
    return writes
