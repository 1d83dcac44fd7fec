from __future__ import annotations

import json

from reconciler_objects import make_service, merge_patch

from aviator.kube import marks
from aviator.kube.services import pod_selector
from aviator.reconcilers.services import (
    desired_shadow_service,
    restore_patch,
    shadow_service_patch,
    takeover_patch,
)


def test_shadow_service_is_selectorless_owned_with_target_ports() -> None:
    target = make_service(
        ports=[
            {"name": "http", "port": 80, "targetPort": "web", "nodePort": 30001},
            {"name": "grpc", "port": 90, "protocol": "TCP", "appProtocol": "grpc"},
        ]
    )
    shadow = desired_shadow_service(target, "web-aviator", "p", "uid-p")
    assert shadow["metadata"]["name"] == "web-aviator"
    assert "selector" not in shadow["spec"]
    assert shadow["spec"]["ports"] == [
        {"name": "http", "protocol": "TCP", "port": 80, "targetPort": "web"},
        {"name": "grpc", "protocol": "TCP", "port": 90, "targetPort": 90, "appProtocol": "grpc"},
    ]
    assert marks.controller_owner(shadow) == ("p", "uid-p")
    assert shadow["metadata"]["labels"][marks.LABEL_POLICY] == "p"


def test_shadow_patch_only_on_semantic_change() -> None:
    target = make_service()
    desired = desired_shadow_service(target, "web-aviator", "p", "uid-p")
    observed = json.loads(json.dumps(desired))
    observed["spec"]["clusterIP"] = "10.0.0.99"  # filled by the API server
    observed["metadata"]["resourceVersion"] = "5"
    assert shadow_service_patch(observed, desired) is None
    observed["spec"]["selector"] = {"app": "x"}
    patch = shadow_service_patch(observed, desired)
    assert patch == {"spec": {"selector": None}}
    target["spec"]["ports"][0]["port"] = 81
    desired2 = desired_shadow_service(target, "web-aviator", "p", "uid-p")
    fixed = merge_patch(observed, shadow_service_patch(observed, desired2))
    assert fixed["spec"]["ports"][0]["port"] == 81 and "selector" not in fixed["spec"]
    assert shadow_service_patch(fixed, desired2) is None


def test_takeover_then_restore_roundtrip() -> None:
    svc = make_service(selector={"app": "web", "tier": "fe"})
    taken = merge_patch(svc, takeover_patch(svc, "p"))
    assert "selector" not in taken["spec"]
    assert pod_selector(taken) == {"app": "web", "tier": "fe"}
    restore = restore_patch(taken, "p")
    assert restore is not None and restore.restores_selector
    back = merge_patch(taken, restore.patch)
    assert back["spec"]["selector"] == {"app": "web", "tier": "fe"}
    assert not back["metadata"].get("annotations")
    assert restore_patch(back, "p") is None
    assert restore_patch(taken, "q") is None  # not q's to give back


def test_selector_restored_by_someone_is_kept() -> None:
    svc = make_service(selector={"app": "web"})
    taken = merge_patch(svc, takeover_patch(svc, "p"))
    taken["spec"]["selector"] = {"app": "other"}  # a human put one back
    restore = restore_patch(taken, "p")
    assert restore is not None and not restore.restores_selector
    assert merge_patch(taken, restore.patch)["spec"]["selector"] == {"app": "other"}


def test_a_corrupted_or_stripped_annotation_restores_from_the_record() -> None:
    svc = make_service(selector={"app": "web"})
    taken = merge_patch(svc, takeover_patch(svc, "p"))
    taken["metadata"]["annotations"][marks.ANNOTATION_ORIGINAL_SELECTOR] = "{garbage"
    assert restore_patch(taken, "p") is not None
    assert not restore_patch(taken, "p").restores_selector  # type: ignore[union-attr]
    restore = restore_patch(taken, "p", {"app": "web"})
    assert restore is not None and restore.restores_selector
    back = merge_patch(taken, restore.patch)
    assert back["spec"]["selector"] == {"app": "web"} and not back["metadata"]["annotations"]
    # Replaced by someone without our annotations, still without a selector.
    stripped = make_service(selector={})
    restore = restore_patch(stripped, "p", {"app": "web"})
    assert restore is not None and restore.patch == {"spec": {"selector": {"app": "web"}}}
    assert restore_patch(make_service(), "p", {"app": "web"}) is None  # has one: leave it


def test_selectorless_target_and_empty_selector() -> None:
    svc = make_service(selector={})
    assert pod_selector(svc) == {}
    bad = make_service(selector={}, annotations={marks.ANNOTATION_ORIGINAL_SELECTOR: "{nope"})
    assert pod_selector(bad) == {}
