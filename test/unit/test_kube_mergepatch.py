"""JSON merge patches: the smallest patch between two objects, and applying one."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from aviator.kube import mergepatch

# JSON without nulls (a merge patch cannot set one), objects nested a few levels.
leaves = st.one_of(
    st.booleans(), st.integers(), st.text(max_size=4), st.lists(st.integers(), max_size=3)
)
objects = st.recursive(
    st.dictionaries(st.sampled_from("abcd"), leaves, max_size=4),
    lambda inner: st.dictionaries(st.sampled_from("abcd"), leaves | inner, max_size=4),
    max_leaves=12,
)


@given(objects, objects)
def test_the_patch_between_two_objects_turns_one_into_the_other(
    old: dict[str, Any], new: dict[str, Any]
) -> None:
    assert mergepatch.apply(old, mergepatch.between(old, new)) == new


@given(objects, objects)
def test_a_replacing_patch_carries_everything_and_turns_one_into_the_other(
    old: dict[str, Any], new: dict[str, Any]
) -> None:
    patch = mergepatch.replacing(old, new)
    assert mergepatch.apply(old, patch) == new
    assert mergepatch.apply({}, patch) == new  # whatever else the server held at the top


@given(objects)
def test_an_unchanged_object_needs_an_empty_patch(obj: dict[str, Any]) -> None:
    assert mergepatch.between(obj, obj) == {}


def test_only_what_changed_is_sent_and_removed_members_are_null() -> None:
    old = {
        "lastEvaluationTime": "t1",
        "pods": [{"name": "a"}],
        "engineState": {"version": 2, "breaker": {"uid-a": {"status": "open"}, "uid-b": {}}},
    }
    new = {
        "lastEvaluationTime": "t2",
        "pods": [{"name": "a"}],
        "engineState": {"version": 2, "breaker": {"uid-b": {}}},
    }
    assert mergepatch.between(old, new) == {
        "lastEvaluationTime": "t2",
        "engineState": {"breaker": {"uid-a": None}},
    }
