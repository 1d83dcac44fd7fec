"""A policy's View is gathered again exactly when the policy object or a cache changed."""

from __future__ import annotations

from reconciler_objects import make_pod, make_service
from test_plan import caches_with, make_policy

from aviator.reconcilers.view import Views, gather

KEY = "default/p"


def test_the_same_view_while_nothing_changed_and_a_new_one_after_any_change() -> None:
    caches = caches_with(make_policy(), make_service(), make_pod("a", "10.0.0.1"))
    views = Views(caches)
    first = views.of(KEY, caches.policies.get(KEY) or {})
    assert views.of(KEY, caches.policies.get(KEY) or {}) is first
    assert first.eligible_facts is views.of(KEY, caches.policies.get(KEY) or {}).eligible_facts

    caches.pods.upsert(make_pod("b", "10.0.0.2"))  # a pod the target selects
    second = views.of(KEY, caches.policies.get(KEY) or {})
    assert second is not first and [p["metadata"]["name"] for p in second.pods] == ["a", "b"]
    caches.pods.upsert(make_pod("c", "10.0.0.3", labels={"app": "other"}))  # one it does not
    third = views.of(KEY, caches.policies.get(KEY) or {})
    assert third is not second and third == second  # gathered again: the same answer

    caches.policies.upsert(make_policy())  # a new object for the policy
    assert views.of(KEY, caches.policies.get(KEY) or {}) == gather(
        caches, caches.policies.get(KEY) or {}
    )
    views.forget(KEY)
    assert views.of(KEY, caches.policies.get(KEY) or {}) is not third
