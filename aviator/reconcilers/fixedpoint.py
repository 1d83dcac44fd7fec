"""An evaluation that changed nothing, and when the next one is the same (pure).

The engine counts evaluations (violations, dampening streaks), so it runs every
evaluationInterval even when nothing moves. But an evaluation is a pure function of
its inputs, the serving set, the selection policy, the state it is given and `now`
(aviator.selection.engine), and `now` is read only for breaker records that hold a
time (an ejection's recovery, a backoff's decay) or that it creates (a change of
state). So an evaluation that left the state and the serving set as it found them,
decided nothing, and leaves no record holding a time, is a *fixed point*: run again
over the very same inputs, from the state it left, it decides the very same.

`FixedPoint.of(...)` is such an evaluation remembered (None for any other);
`FixedPoint.holds(...)` tells whether the next evaluation is that one again:

- the engine inputs are the same objects, in the same order
  (`evaluation.pod_input` gives a pod the same object while everything the engine
  reads of it is the same);
- the same serving set, the same `SelectionPolicy` object (parsed once per
  generation), and the state given is the one the evaluation left (the same object).

A healthy fleet's policies spend their evaluations here: a comparison per pod.

A policy's inputs may alternate between two forms that both leave the state as it is:
a pod whose reports come a little slower than the evaluations has fresh data at one
evaluation and none at the next. `FixedPoint.kept` remembers the last `KEPT` fixed
points from the same state (an evaluation that leaves the state as it was given keeps
the very object it was given: `evaluation.select`), so each form finds its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aviator.selection.state import BreakerStatus, EngineState
from aviator.selection.types import PodInput, SelectionPolicy

# How many fixed points of one policy are remembered (module docstring).
KEPT = 2


@dataclass(frozen=True, slots=True, eq=False)
class FixedPoint:
    """An evaluation that changed nothing (see the module docstring) and its result."""

    inputs: tuple[PodInput, ...]
    active: frozenset[str]
    selection: SelectionPolicy
    state: Any  # what it left, as persisted: the next evaluation's input if unchanged
    result: Any  # what it decided (the caller's form of it)

    @staticmethod
    def of(
        inputs: Sequence[PodInput],
        active: frozenset[str],
        selection: SelectionPolicy,
        unchanged: bool,
        left: EngineState,
        chosen: frozenset[str],
        decided: bool,
        persisted: Any,
        result: Any,
    ) -> FixedPoint | None:
        """The evaluation of `inputs` that left state `left` (`unchanged`: equal to the
        state it was given), chose `chosen` and `decided` something or not, remembered
        if it is a fixed point; `persisted` is `left` in the form the next evaluation
        will be given it."""
        if decided or chosen != active or not unchanged or not timeless(left):
            return None
        return FixedPoint(tuple(inputs), active, selection, persisted, result)

    @staticmethod
    def kept(new: FixedPoint | None, held: tuple[FixedPoint, ...]) -> tuple[FixedPoint, ...]:
        """The fixed points to remember after an evaluation that remembered `new` (None:
        not a fixed point, and nothing is kept), `held` the ones before it: `new` first,
        then those from the same state, at most `KEPT` in all."""
        if new is None:
            return ()
        return (new, *(p for p in held if p.state is new.state))[:KEPT]

    def holds(
        self,
        inputs: Sequence[PodInput],
        active: frozenset[str],
        selection: SelectionPolicy,
        persisted: Any,
    ) -> bool:
        """Whether an evaluation of these is this one again."""
        held = self.inputs
        return (
            persisted is self.state
            and selection is self.selection
            and len(inputs) == len(held)
            and active == self.active
            and all(a is b for a, b in zip(inputs, held, strict=True))
        )


def timeless(state: EngineState) -> bool:
    """Whether no breaker record of `state` reads the clock at the next evaluation."""
    return all(r.status is BreakerStatus.CLOSED and r.since is None for r in state.breaker.values())
