"""What the leader remembers between reconciles: `Memory.evaluated` is `replace` made
by hand, so it must carry every field it does not set."""

from __future__ import annotations

import dataclasses
from typing import Any

from aviator.reconcilers.evaluation import Outcome
from aviator.reconcilers.memory import Memory

SET_BY_AN_EVALUATION = {
    "engine_state",
    "last_evaluation",
    "next_evaluation",
    "generation",
    "outcome",
    "stalled",
    "fixed_points",
}


def test_an_evaluation_sets_its_fields_and_carries_every_other_one() -> None:
    # A value of its own in every field, so a field left at its default shows.
    before = Memory(**{f.name: object() for f in dataclasses.fields(Memory)})  # type: ignore[arg-type]
    outcome = Outcome(active={"a"}, states={}, reasons={}, events=[], engine_state={"v": 1})
    stalled = frozenset({"b"})
    fixed: tuple[Any, ...] = ()
    after = before.evaluated(outcome, 3, 10.0, 11.0, stalled, fixed)
    assert after == dataclasses.replace(
        before,
        engine_state={"v": 1},
        last_evaluation=10.0,
        next_evaluation=11.0,
        generation=3,
        outcome=outcome,
        stalled=stalled,
        fixed_points=fixed,
    )
    for f in dataclasses.fields(Memory):
        if f.name not in SET_BY_AN_EVALUATION:
            assert getattr(after, f.name) is getattr(before, f.name), f.name
