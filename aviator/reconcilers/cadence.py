"""When a policy's selection engine runs (pure).

The engine runs once per `evaluationInterval`: its counters (consecutive violations,
dampening streaks) count evaluations, so our own writes, pod churn or agent reports
must not make it run faster. Two things cannot wait for the interval:

- the first evaluation, and the first after a spec change (`evaluation_due`);
- a serving pod newly seen with a request open longer than circuitBreaker.p99Threshold
  (`urgent_wait`): the breaker ejects such a pod at the first evaluation that sees it,
  so that evaluation runs at once. Once per stall (a pod still stalled at the last
  evaluation, say kept by the ejection cap, does not make every reconcile evaluate),
  and never closer than `URGENT_GAP_S` to the previous evaluation. An urgent evaluation
  is an evaluation like any other: it counts for consecutiveViolations and
  dampening, and the next regular one comes an interval after it.
"""

from __future__ import annotations

from collections.abc import Set

# A requeue timer may fire a little early; an evaluation this close to due counts.
EARLY_FRACTION = 0.05
# Urgent evaluations never come closer together than this.
URGENT_GAP_S = 0.2


def evaluation_due(
    *, evaluated: bool, next_evaluation: float | None, interval_s: float, now: float
) -> bool:
    """`evaluated`: the engine ran for the current spec generation."""
    return (
        not evaluated
        or next_evaluation is None
        or now >= next_evaluation - EARLY_FRACTION * interval_s
    )


def urgent_wait(
    *,
    serving: Set[str] | None,
    last_evaluation: float | None,
    seen: Set[str],
    stalled: Set[str],
    now: float,
) -> float | None:
    """Seconds until an urgent evaluation may run (0: now), or None when none is
    needed: no pod of `serving` (the last outcome's active set) is in `stalled` but not
    in `seen` (the stalled pods at the last evaluation)."""
    if serving is None or last_evaluation is None:
        return None  # the first evaluation is due anyway
    if not any(name in serving and name not in seen for name in stalled):
        return None
    return max(0.0, last_evaluation + URGENT_GAP_S - now)
