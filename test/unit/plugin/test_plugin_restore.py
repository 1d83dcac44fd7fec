"""`kubectl aviator restore`: the decision, on Services as the controller leaves them
(built with the reconciler's own takeover_patch)."""

from __future__ import annotations

import json
from typing import Any

from aviator.kube import marks
from aviator.plugin.restore import plan_restore
from aviator.reconcilers.services import takeover_patch

JSON = dict[str, Any]
SELECTOR = {"app": "web"}


def service(selector: dict[str, str] | None = None) -> JSON:
    return {
        "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "41"},
        "spec": {"selector": dict(selector) if selector else None, "ports": [{"port": 80}]},
    }


def taken_over(by: str = "p") -> JSON:
    """The Service after the controller's takeover patch."""
    svc = service(SELECTOR)
    patch = takeover_patch(svc, by)
    svc["metadata"]["annotations"] = patch["metadata"]["annotations"]
    svc["spec"]["selector"] = None
    return svc


def policy(name: str = "p", deleting: bool = False, record: bool = True) -> JSON:
    meta: JSON = {"name": name, "namespace": "shop", "generation": 1}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: JSON = {}
    if record:
        status["takeover"] = {
            "service": "web",
            "originalSelector": SELECTOR,
            "phase": "TakenOver",
            "generation": 1,
        }
    return {"metadata": meta, "spec": {"targetRef": {"name": "web"}}, "status": status}


def test_refuses_while_the_policy_routes() -> None:
    plan = plan_restore(taken_over(), [policy()])
    assert plan.refused and plan.patch is None
    assert "kubectl delete avp p" in plan.message


def test_forced_restores_from_the_annotation() -> None:
    plan = plan_restore(taken_over(), [policy()], force=True)
    assert not plan.refused and plan.patch is not None
    assert plan.patch["spec"]["selector"] == SELECTOR
    assert plan.patch["metadata"]["annotations"] == {
        marks.ANNOTATION_ORIGINAL_SELECTOR: None,
        marks.ANNOTATION_TAKEN_OVER_BY: None,
    }
    # optimistic concurrency: a Service changed since it was read is not overwritten
    assert plan.patch["metadata"]["resourceVersion"] == "41"


def test_policy_gone_restores_without_force() -> None:
    plan = plan_restore(taken_over(), [])
    assert plan.patch is not None and plan.patch["spec"]["selector"] == SELECTOR
    assert "gone" in plan.message


def test_policy_stuck_in_deletion_restores() -> None:
    plan = plan_restore(taken_over(), [policy(deleting=True)])
    assert plan.patch is not None and plan.patch["spec"]["selector"] == SELECTOR


def test_corrupted_annotation_falls_back_to_the_policy_record() -> None:
    svc = taken_over()
    svc["metadata"]["annotations"][marks.ANNOTATION_ORIGINAL_SELECTOR] = "{not json"
    plan = plan_restore(svc, [policy(deleting=True)])
    assert plan.patch is not None and plan.patch["spec"]["selector"] == SELECTOR


def test_stripped_annotations_found_through_the_record() -> None:
    svc = service()
    plan = plan_restore(svc, [policy()])
    assert plan.refused  # the recording policy still routes it
    plan = plan_restore(svc, [policy(deleting=True)])
    assert plan.patch is not None and plan.patch["spec"]["selector"] == SELECTOR


def test_selector_lost_everywhere_is_refused() -> None:
    svc = taken_over()
    svc["metadata"]["annotations"][marks.ANNOTATION_ORIGINAL_SELECTOR] = json.dumps([])
    plan = plan_restore(svc, [])
    assert plan.refused and "by hand" in plan.message


def test_untouched_service_needs_nothing() -> None:
    plan = plan_restore(service(SELECTOR), [])
    assert plan.patch is None and not plan.refused
    plan = plan_restore(service(), [])
    assert plan.refused and "did not take it over" in plan.message


def test_someone_else_restored_selector_keeps_it_and_drops_marks() -> None:
    svc = taken_over()
    svc["spec"]["selector"] = {"app": "web", "tier": "new"}
    plan = plan_restore(svc, [])
    assert plan.patch is not None
    assert "spec" not in plan.patch  # their selector stays
    assert plan.patch["metadata"]["annotations"][marks.ANNOTATION_TAKEN_OVER_BY] is None
