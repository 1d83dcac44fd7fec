"""Safety rules: how many pods may be out of traffic, the serving floor, overload.

These bound what the other stages may do, so they live apart and are stated once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from aviator.selection.modes import ModeResult
from aviator.selection.types import Reason


def serving_floor(min_endpoints: int, eligible: int) -> int:
    """How many eligible pods must serve: minEndpoints, but never more than exist."""
    return min(max(1, min_endpoints), eligible)


def ejection_cap(max_ejection_percent: int, eligible: int, min_endpoints: int) -> int:
    """How many eligible pods the circuit breaker may keep out of traffic at once.

    maxEjectionPercent of the eligible pods, rounded down but at least one (so small
    Services can still lose their one bad pod), unless the percentage is 0; and never
    so many that fewer than the serving floor remain.
    """
    if eligible == 0 or max_ejection_percent == 0:
        return 0
    by_percent = max(1, max_ejection_percent * eligible // 100)
    return max(0, min(by_percent, eligible - serving_floor(min_endpoints, eligible)))


def is_overloaded(violating: int, eligible: int) -> bool:
    """More than half of the eligible pods are slow: that is load, not outliers."""
    return eligible > 0 and 2 * violating > eligible


def with_floor(mode: ModeResult, floor: int) -> ModeResult:
    """Make the mode's target hold at least `floor` pods (the next best ones).

    The floor is part of the target, so which pods fill it is dampened like any other
    choice; `fill_to_floor` then only covers sudden vacancies.
    """
    missing = floor - len(mode.chosen)
    if missing <= 0:
        return mode
    added = _take(missing, (n for n in mode.ranked if n not in mode.chosen))
    reasons = dict(mode.reasons)
    reasons.update(dict.fromkeys(added, Reason.MIN_ENDPOINTS))
    size = None if mode.size is None else min(max(mode.size, floor), len(mode.ranked))
    return ModeResult(mode.chosen | frozenset(added), mode.ranked, size, reasons)


def fill_to_floor(
    serving: frozenset[str], ranked: Sequence[str], floor: int
) -> tuple[frozenset[str], tuple[str, ...]]:
    """Add the best-ranked non-serving pods until `floor` pods serve.

    Returns the new serving set and the pods that were added (in rank order).
    """
    missing = floor - len(serving)
    if missing <= 0:
        return serving, ()
    added = tuple(_take(missing, (name for name in ranked if name not in serving)))
    return serving | frozenset(added), added


def _take(n: int, names: Iterable[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        if len(out) >= n:
            break
        out.append(name)
    return out
