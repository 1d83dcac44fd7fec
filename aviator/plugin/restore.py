"""`kubectl aviator restore SERVICE`: give a taken-over Service its selector back,
safely (pure).

The normal way is to delete the policy: its finalizer restores the selector. This
command is for when that cannot happen: the controller was removed before the
policy (the README's uninstall order), or the policy is gone and left the annotation
behind. It never fights a running policy: while the policy that took the Service over
exists and is not being deleted, it refuses unless forced (forced, the controller
reports SelectorRestored and does not take the Service over again for that policy
generation).

The patch is the reconciler's own (`aviator.reconcilers.services.restore_patch`),
with the selector from the annotation, else from the policy's `status.takeover`
record; it carries the Service's resourceVersion, so a concurrent change fails it
instead of being overwritten.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aviator.kube import marks
from aviator.kube.objects import JSON, annotations_of
from aviator.reconcilers.services import restore_patch
from aviator.reconcilers.takeover import record_of


@dataclass(frozen=True)
class RestorePlan:
    """What to do: `patch` (None: nothing to write) and a sentence for the user.
    `refused`: the command must fail (exit code 1) with `message`."""

    patch: JSON | None
    message: str
    refused: bool = False


def _owner(service: JSON, policies: Sequence[JSON]) -> tuple[str | None, JSON | None]:
    """The policy that took the Service over: the annotation's, else the one whose
    takeover record names this Service."""
    name = str(service["metadata"]["name"])
    by_name = {str(p["metadata"]["name"]): p for p in policies}
    annotated = annotations_of(service).get(marks.ANNOTATION_TAKEN_OVER_BY)
    if annotated:
        return annotated, by_name.get(annotated)
    for p in policies:
        record = record_of(p.get("status"))
        if record is not None and record.service == name:
            return str(p["metadata"]["name"]), p
    return None, None


def plan_restore(service: JSON, policies: Sequence[JSON], *, force: bool = False) -> RestorePlan:
    """`policies`: the AviatorPolicies of the Service's namespace."""
    meta = service["metadata"]
    ref = f"{meta.get('namespace', '')}/{meta['name']}"
    has_selector = bool(service.get("spec", {}).get("selector"))
    if has_selector and not annotations_of(service).get(marks.ANNOTATION_TAKEN_OVER_BY):
        return RestorePlan(None, f"Service {ref} has its selector; nothing to restore")
    owner, policy = _owner(service, policies)
    if owner is None:
        return RestorePlan(
            None,
            f"Service {ref} has no selector and no Aviator takeover mark or record: "
            "Aviator did not take it over, so there is nothing to restore",
            refused=True,
        )
    live = policy is not None and not policy["metadata"].get("deletionTimestamp")
    if live and not force:
        return RestorePlan(
            None,
            f"AviatorPolicy {owner} still routes Service {ref} (takeover). Delete it "
            f"(`kubectl delete avp {owner} -n {meta.get('namespace', '')}`): the controller "
            "restores the selector and removes its slices. Use --force to restore anyway "
            "(the controller then reports SelectorRestored and leaves the Service alone)",
            refused=True,
        )
    record = record_of(policy.get("status")) if policy is not None else None
    recorded = record.selector if record is not None and record.service == meta["name"] else None
    restore = restore_patch(service, owner, recorded)
    if restore is None or not restore.patch:
        return RestorePlan(None, f"Service {ref} has nothing of AviatorPolicy {owner} to undo")
    if not restore.restores_selector and not has_selector:
        return RestorePlan(
            None,
            f"Service {ref} was taken over by AviatorPolicy {owner}, but its original "
            "selector is in neither the annotation nor a policy record: set it by hand",
            refused=True,
        )
    patch = dict(restore.patch)
    patch["metadata"] = {
        **patch.get("metadata", {}),
        "resourceVersion": meta.get("resourceVersion"),
    }
    if restore.restores_selector:
        selector = patch["spec"]["selector"]
        what = "selector " + ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        message = f"Service {ref}: {what} restored, AviatorPolicy {owner}'s marks removed"
    else:
        message = f"Service {ref} already has a selector; AviatorPolicy {owner}'s marks removed"
    if policy is None:
        message += " (the policy is gone)"
    elif not live:
        message += " (the policy is being deleted; its finalizer needs the controller)"
    return RestorePlan(patch, message)
