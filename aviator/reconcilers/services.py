"""Service planning for both routing modes. Pure: no I/O.

shadow: a selector-less `<target>-aviator` Service (or `routing.serviceName`) with the
target's ports, owned by the policy; Aviator owns its slices.

takeover: the target's selector moves into the annotation
`aviator.example.com/original-selector` (plus `.../taken-over-by: <policy>`), so the
built-in controller drops its slices and Aviator owns the slices of the original name.
Cleanup restores the selector (from the annotation, else from the policy's takeover
record, see `aviator.reconcilers.takeover`, which also decides when a Service is ours
and when someone restored it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from aviator.kube import marks
from aviator.kube.objects import JSON, annotations_of
from aviator.kube.services import original_selector


def _ports(service: JSON) -> list[JSON]:
    """Service ports with API defaults filled (protocol TCP, targetPort = port);
    nodePort dropped, since a ClusterIP shadow cannot carry it."""
    out: list[JSON] = []
    for p in service.get("spec", {}).get("ports") or []:
        port: JSON = {
            "name": p.get("name") or "",
            "protocol": p.get("protocol") or "TCP",
            "port": p.get("port"),
            "targetPort": p.get("targetPort", p.get("port")),
        }
        if p.get("appProtocol"):
            port["appProtocol"] = p["appProtocol"]
        if not port["name"]:
            del port["name"]
        out.append(port)
    return out


def desired_shadow_service(target: JSON, name: str, policy: str, policy_uid: str) -> JSON:
    """The selector-less Service clients call for latency-aware routing."""
    spec: JSON = {"type": "ClusterIP", "ports": _ports(target)}
    tspec = target.get("spec", {})
    if tspec.get("sessionAffinity"):
        spec["sessionAffinity"] = tspec["sessionAffinity"]
    if tspec.get("clusterIP") == "None":
        spec["clusterIP"] = "None"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": target.get("metadata", {}).get("namespace", ""),
            "labels": {
                marks.LABEL_POLICY: policy,
                marks.LABEL_APP_MANAGED_BY: marks.APP_MANAGER,
            },
            "ownerReferences": [marks.owner_reference(policy, policy_uid)],
        },
        "spec": spec,
    }


def shadow_service_patch(observed: JSON, desired: JSON) -> JSON | None:
    """A merge patch bringing our shadow Service to `desired`, or None if it already
    says the same (ports, no selector, our labels, our controller ref)."""
    patch: JSON = {}
    obs_labels = observed.get("metadata", {}).get("labels") or {}
    want_labels = desired["metadata"]["labels"]
    if any(obs_labels.get(k) != v for k, v in want_labels.items()):
        patch.setdefault("metadata", {})["labels"] = want_labels
    if marks.controller_owner(observed) != marks.controller_owner(desired):
        patch.setdefault("metadata", {})["ownerReferences"] = desired["metadata"]["ownerReferences"]
    spec: JSON = {}
    if _ports(observed) != desired["spec"]["ports"]:
        spec["ports"] = desired["spec"]["ports"]
    if observed.get("spec", {}).get("selector"):
        spec["selector"] = None
    if observed.get("spec", {}).get("sessionAffinity", "None") != desired["spec"].get(
        "sessionAffinity", "None"
    ):
        spec["sessionAffinity"] = desired["spec"].get("sessionAffinity", "None")
    if spec:
        patch["spec"] = spec
    return patch or None


def takeover_patch(service: JSON, policy: str) -> JSON:
    """Merge patch: save the selector in the annotation and remove it."""
    selector = service.get("spec", {}).get("selector") or {}
    return {
        "metadata": {
            "annotations": {
                marks.ANNOTATION_ORIGINAL_SELECTOR: json.dumps(selector, sort_keys=True),
                marks.ANNOTATION_TAKEN_OVER_BY: policy,
            }
        },
        "spec": {"selector": None},
    }


@dataclass(frozen=True)
class Restore:
    """How to give a Service back: a merge patch, and whether it puts a selector back."""

    patch: JSON
    restores_selector: bool


def restore_patch(
    service: JSON, policy: str, recorded: Mapping[str, str] | None = None
) -> Restore | None:
    """Undo this policy's takeover (None when there is nothing of ours to undo). The
    selector put back is the annotation's, else `recorded` (the policy's record of
    this Service: the annotation may be corrupted or gone). A selector someone already
    put back is kept as is; only our annotations go."""
    ann = annotations_of(service)
    ours = ann.get(marks.ANNOTATION_TAKEN_OVER_BY) == policy
    has_selector = bool(service.get("spec", {}).get("selector"))
    saved = (original_selector(service) if ours else None) or dict(recorded or {})
    if not ours and (has_selector or not saved):
        return None
    patch: JSON = {}
    if ours:
        patch["metadata"] = {
            "annotations": {
                marks.ANNOTATION_ORIGINAL_SELECTOR: None,
                marks.ANNOTATION_TAKEN_OVER_BY: None,
            }
        }
    if has_selector or not saved:
        return Restore(patch, restores_selector=False)
    patch["spec"] = {"selector": saved}
    return Restore(patch, restores_selector=True)
