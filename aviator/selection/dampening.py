"""Dampening: persistence for changes of the measured serving set.

Hysteresis (the incumbent margin) is applied by the mode's ranking; this stage adds
persistence. The mode's choice (the target) replaces the serving set only after the
same target has won `consecutiveIntervals` evaluations in a row; a different target
restarts the count. Until then the incumbents keep serving, adjusted at once for:

- incumbents that left the pool (gone, unready, terminating, ejected): dropped;
- pods readmitted by the circuit breaker that the target wants: added;
- sized modes (topN, percentage): the set is cut to, or filled
  up to, the target size at once, best ranked first, so spec edits and vacancies never
  wait;
- no incumbent left, or the first evaluation: the target applies at once.

Unmeasured pods and the safety floor are handled outside this stage and are never
delayed.
"""

from __future__ import annotations

from dataclasses import dataclass

from aviator.selection.modes import ModeResult
from aviator.selection.state import DampeningState
from aviator.selection.types import DampeningPolicy


@dataclass(frozen=True, slots=True)
class DampeningOutcome:
    chosen: frozenset[str]
    state: DampeningState


def dampen(
    mode: ModeResult,
    incumbents: frozenset[str],
    readmitted: frozenset[str],
    policy: DampeningPolicy,
    state: DampeningState,
    first: bool,
) -> DampeningOutcome:
    """Decide which measured pods serve. `incumbents` are serving pods still in the pool."""
    target = mode.chosen
    if not policy.enabled or first or not incumbents:
        return DampeningOutcome(target, DampeningState())

    kept = incumbents | (readmitted & target)
    if mode.size is not None and len(kept) != mode.size:
        if len(kept) > mode.size:
            kept = frozenset([n for n in mode.ranked if n in kept][: mode.size])
        else:
            fill = [n for n in mode.ranked if n in target and n not in kept]
            kept = kept | frozenset(fill[: mode.size - len(kept)])

    if kept == target:
        return DampeningOutcome(kept, DampeningState())
    streak = state.streak + 1 if state.candidate == target else 1
    if streak >= policy.consecutive_intervals:
        return DampeningOutcome(target, DampeningState())
    return DampeningOutcome(kept, DampeningState(target, streak))
