"""The hand-over rule, case by case, and the property that makes it safe."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aviator.kube.marks import ANNOTATION_SHARD
from aviator.sharding.claims import (
    Action,
    claim_patch,
    decide,
    holder,
    marker_of,
    marker_value,
)

ALIVE = frozenset({"a", "b"})


def test_the_table() -> None:
    mine, old = marker_value("a", "t2"), marker_value("a", "t1")
    other = marker_value("b", "t9")
    dead = marker_value("c", "t9")
    assert decide("a", "t2", mine, ALIVE, "a") is Action.KEEP
    assert decide("a", "t2", mine, ALIVE, "b") is Action.RELEASE
    assert decide("a", "t2", old, ALIVE, "a") is Action.CLAIM
    assert decide("a", "t2", old, ALIVE, "b") is Action.CLEAR
    assert decide("a", "t2", "", ALIVE, "a") is Action.CLAIM
    assert decide("a", "t2", "", ALIVE, "b") is Action.IGNORE
    assert decide("a", "t2", other, ALIVE, "a") is Action.WAIT
    assert decide("a", "t2", other, ALIVE, "b") is Action.IGNORE
    assert decide("a", "t2", dead, ALIVE, "a") is Action.CLAIM
    assert decide("a", "t2", dead, ALIVE, "b") is Action.IGNORE


idents = st.sampled_from(["a", "b", "c"])
terms = st.sampled_from(["t1", "t2"])


@given(idents, terms, st.one_of(st.just(""), st.builds(marker_value, idents, terms)), idents)
def test_never_takes_a_live_others_policy(me: str, term: str, marker: str, ring_owner: str) -> None:
    action = decide(me, term, marker, ALIVE | {me}, ring_owner)
    if holder(marker) not in ("", me) and holder(marker) in ALIVE:
        assert action in (Action.WAIT, Action.IGNORE)
    if action is Action.KEEP:
        assert marker == marker_value(me, term) and ring_owner == me


def test_markers_on_objects_and_patches() -> None:
    policy = {"metadata": {"annotations": {ANNOTATION_SHARD: "a@t1"}}}
    assert marker_of(policy) == "a@t1" and marker_of({}) == ""
    assert holder("a@t1") == "a" and holder("") == ""
    assert claim_patch("42", None) == {
        "metadata": {"resourceVersion": "42", "annotations": {ANNOTATION_SHARD: None}}
    }
