"""Takeover that never fights: where a target Service stands (`takeover.standing`),
and whole reconciles (as in test_plan.py, whose helpers these are) through the ways
people and tools restore a Service, crashes between the takeover's steps and a
corrupted annotation."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from reconciler_objects import make_service, merge_patch
from test_plan import (
    T0,
    apply,
    caches_with,
    condition,
    four_pods,
    later,
    make_policy,
    run,
    verbs,
)

from aviator.kube import marks
from aviator.reconcilers.memory import Memory
from aviator.reconcilers.plan import Plan
from aviator.reconcilers.services import takeover_patch
from aviator.reconcilers.takeover import (
    PENDING,
    RESTORED,
    TAKEN_OVER,
    Record,
    Standing,
    record_of,
    standing,
)
from aviator.reconcilers.view import Caches

JSON = dict[str, Any]
SELECTOR = {"app": "web"}
ROUND = (1, "")
TAKEOVER = {
    "targetRef": {"name": "web"},
    "routing": {"mode": "takeover"},
    "selection": {"mode": "percentage", "percentage": 100},
}


def taken(policy: str = "p") -> JSON:
    svc = make_service(selector=SELECTOR)
    out: JSON = merge_patch(svc, takeover_patch(svc, policy))
    return out


def rec(phase: str, generation: int = 1, retake: str = "", service: str = "web") -> Record:
    return Record(service, dict(SELECTOR), phase, generation, retake)


# --- standing: the decision table -------------------------------------------------------


def test_untouched_is_taken_over_with_a_pending_record() -> None:
    found = standing(make_service(selector=SELECTOR), "p", None, ROUND)
    assert found.standing is Standing.TAKE
    assert found.record == rec(PENDING)


def test_ours_without_selector_is_taken() -> None:
    found = standing(taken(), "p", rec(PENDING), ROUND)
    assert found.standing is Standing.TAKEN and found.record == rec(TAKEN_OVER)
    # A previous leader's takeover without a record: the annotation makes one.
    assert standing(taken(), "p", None, ROUND).record == rec(TAKEN_OVER)


def test_restored_in_the_same_round_is_not_taken_again_by_any_means() -> None:
    patched = taken()
    patched["spec"]["selector"] = SELECTOR  # merge patch: our annotations stay
    replaced = make_service(selector=SELECTOR)  # full replace: our annotations are gone
    for svc in (patched, replaced):
        found = standing(svc, "p", rec(TAKEN_OVER), ROUND)
        assert found.standing is Standing.RESTORED and found.record == rec(RESTORED)
        again = standing(svc, "p", found.record, ROUND)
        assert again.standing is Standing.RESTORED


def test_a_new_round_takes_it_over_again() -> None:
    replaced = make_service(selector=SELECTOR)
    assert standing(replaced, "p", rec(RESTORED), (2, "")).standing is Standing.TAKE
    assert standing(replaced, "p", rec(RESTORED), (1, "now")).standing is Standing.TAKE


def test_a_pending_takeover_is_finished_after_a_crash() -> None:
    # The record was written, the Service patch never happened.
    found = standing(make_service(selector=SELECTOR), "p", rec(PENDING), ROUND)
    assert found.standing is Standing.TAKE


def test_a_corrupted_or_stripped_annotation_falls_back_to_the_record() -> None:
    corrupted = taken()
    corrupted["metadata"]["annotations"][marks.ANNOTATION_ORIGINAL_SELECTOR] = "{oops"
    stripped = make_service(selector={})
    for svc in (corrupted, stripped):
        found = standing(svc, "p", rec(TAKEN_OVER), ROUND)
        assert found.standing is Standing.TAKEN and found.selector == SELECTOR
    assert standing(corrupted, "p", None, ROUND).standing is Standing.NO_SELECTOR


def test_a_restore_before_records_existed_is_recognised_by_the_annotation() -> None:
    legacy = taken()
    legacy["spec"]["selector"] = SELECTOR
    assert standing(legacy, "p", None, ROUND).standing is Standing.RESTORED


def test_another_services_record_and_another_policys_service() -> None:
    other = rec(TAKEN_OVER, service="api")
    assert standing(make_service(selector=SELECTOR), "p", other, ROUND).standing is Standing.TAKE
    assert standing(taken("q"), "p", None, ROUND).standing is Standing.OTHER_POLICY


def test_endpoints_gone_is_remembered_until_a_new_takeover() -> None:
    found = standing(taken(), "p", rec(TAKEN_OVER), ROUND, endpoints_gone=True)
    assert found.record is not None and found.record.endpoints_gone
    later_ = standing(taken(), "p", found.record, ROUND)
    assert later_.record is not None and later_.record.endpoints_gone
    fresh = standing(make_service(selector=SELECTOR), "p", found.record, (2, ""))
    assert fresh.record is not None and not fresh.record.endpoints_gone


def test_record_json_round_trip_and_bad_input() -> None:
    r = Record("web", {"a": "b"}, TAKEN_OVER, 3, "x", endpoints_gone=True)
    assert Record.from_json(r.to_json()) == r
    assert record_of({"takeover": r.to_json()}) == r
    for bad in (None, [], {"service": "web"}, {**r.to_json(), "phase": "Odd"}):
        assert Record.from_json(bad) is None


# --- whole reconciles -----------------------------------------------------------------


class Cluster:
    """Caches that play the API server, and the leader's memory between reconciles."""

    def __init__(self, *objs: JSON, spec: JSON | None = None) -> None:
        self.caches: Caches = caches_with(make_policy(spec=spec or TAKEOVER), *objs)
        self.memory: Memory | None = None
        self.clock = T0
        self.service_writes: list[str] = []

    def reconcile(self) -> Plan:
        self.clock = later(self.clock, 5)
        _, todo = run(self.caches, "default/p", self.memory, self.clock)
        apply(self.caches, todo)
        self.service_writes += [n for v, k, n in verbs(todo.writes) if k == "Service"]
        if todo.memory is not None:
            self.memory = dataclasses.replace(
                todo.memory, status=todo.status or (self.memory.status if self.memory else None)
            )
        return todo

    def service(self) -> JSON:
        svc = self.caches.services.get("default/web")
        assert svc is not None
        return svc

    def policy(self) -> JSON:
        policy = self.caches.policies.get("default/p")
        assert policy is not None
        return policy

    def someone_sets(self, svc: JSON) -> None:
        self.caches.services.upsert(svc)

    def retake(self, value: str) -> None:
        policy = copy.deepcopy(self.policy())  # an update is a new object, as a watch's
        policy["metadata"].setdefault("annotations", {})[marks.ANNOTATION_RETAKE] = value
        self.caches.policies.upsert(policy)

    def delete_policy(self) -> Plan:
        policy = copy.deepcopy(self.policy())
        policy["metadata"]["deletionTimestamp"] = "2026-01-02T00:00:00Z"
        self.caches.policies.upsert(policy)
        return self.reconcile()


def test_gitops_full_replace_is_not_fought_until_a_retake() -> None:
    cluster = Cluster(make_service(), *four_pods())
    cluster.reconcile()
    assert "selector" not in cluster.service()["spec"]
    assert cluster.service_writes == ["web"]
    # A GitOps tool's self-heal replaces the Service with its manifest: selector back,
    # our annotations gone.
    cluster.someone_sets(make_service())
    for _ in range(5):
        todo = cluster.reconcile()
        assert cluster.service()["spec"]["selector"] == SELECTOR
    assert cluster.service_writes == ["web"]  # no second takeover
    status = cluster.policy()["status"]
    degraded = condition(status, "Degraded")
    assert degraded["reason"] == "SelectorRestored"
    assert marks.ANNOTATION_RETAKE in degraded["message"]
    assert status["takeover"]["phase"] == RESTORED
    assert todo.status_write is None  # and quiet once reported
    # The policy's owner asks for it again: one takeover, then quiet.
    cluster.retake("1")
    cluster.reconcile()
    cluster.reconcile()
    assert cluster.service_writes == ["web", "web"]
    assert "selector" not in cluster.service()["spec"]


def test_deleting_restores_the_selector_from_the_record_when_the_annotation_is_corrupt() -> None:
    cluster = Cluster(make_service(), *four_pods())
    cluster.reconcile()
    svc = cluster.service()
    svc["metadata"]["annotations"][marks.ANNOTATION_ORIGINAL_SELECTOR] = "not json"
    cluster.someone_sets(svc)
    cluster.reconcile()
    # Its pods are still found, by the record.
    assert condition(cluster.policy()["status"], "Ready")["status"] == "True"
    final = cluster.delete_policy()
    restore = next(w for w in final.writes if w.resource.kind == "Service")
    assert restore.body is not None and restore.body["spec"] == {"selector": SELECTOR}
    assert cluster.service()["spec"]["selector"] == SELECTOR
    assert not cluster.service()["metadata"].get("annotations")


def test_a_crash_after_the_record_before_the_service_patch() -> None:
    cluster = Cluster(make_service(), *four_pods())
    _, todo = run(cluster.caches, "default/p", None, T0)
    # Only the writes up to the record made it; then the process died.
    upto = verbs(todo.writes).index(("patch", "AviatorPolicy", "p"), 1) + 1
    apply(cluster.caches, dataclasses.replace(todo, writes=todo.writes[:upto], status_write=None))
    assert cluster.policy()["status"]["takeover"]["phase"] == PENDING
    assert cluster.service()["spec"]["selector"] == SELECTOR
    # A new leader (no memory) finishes the takeover.
    cluster.reconcile()
    assert "selector" not in cluster.service()["spec"]
    assert cluster.policy()["status"]["takeover"]["phase"] == TAKEN_OVER
    final = cluster.delete_policy()
    assert any(w.resource.kind == "Service" for w in final.writes)
    assert cluster.service()["spec"]["selector"] == SELECTOR


def test_a_crash_after_the_service_patch_before_the_status() -> None:
    cluster = Cluster(make_service(), *four_pods())
    _, todo = run(cluster.caches, "default/p", None, T0)
    upto = verbs(todo.writes).index(("patch", "Service", "web")) + 1
    apply(cluster.caches, dataclasses.replace(todo, writes=todo.writes[:upto], status_write=None))
    assert (
        json.loads(cluster.service()["metadata"]["annotations"][marks.ANNOTATION_ORIGINAL_SELECTOR])
        == SELECTOR
    )
    assert cluster.policy()["status"]["takeover"]["originalSelector"] == SELECTOR
    cluster.reconcile()  # a new leader confirms, and does not take it over twice
    assert cluster.policy()["status"]["takeover"]["phase"] == TAKEN_OVER
    assert cluster.service_writes == []
    cluster.delete_policy()
    assert cluster.service()["spec"]["selector"] == SELECTOR


ACTS = st.sampled_from(["nothing", "patch-back", "replace", "strip-annotations", "retake"])


@settings(max_examples=60, deadline=None)
@given(st.lists(ACTS, min_size=1, max_size=12))
def test_never_two_takeovers_in_one_round(acts: list[str]) -> None:
    """Whatever people do to the Service, Aviator writes the takeover at most once per
    round, and deleting the policy always leaves the Service with its selector."""
    cluster = Cluster(make_service(), *four_pods())
    cluster.reconcile()
    rounds = 1
    for act in acts:
        svc = cluster.service()
        if act == "patch-back":
            svc["spec"]["selector"] = dict(SELECTOR)
        elif act == "replace":
            svc = make_service()
        elif act == "strip-annotations":
            svc["metadata"].pop("annotations", None)
        elif act == "retake":
            cluster.retake(f"r{rounds}")
            rounds += 1
        cluster.someone_sets(svc)
        cluster.reconcile()
        assert len(cluster.service_writes) <= rounds
    cluster.delete_policy()
    assert cluster.service()["spec"].get("selector") == SELECTOR
