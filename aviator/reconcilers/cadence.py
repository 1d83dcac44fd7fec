"""When a policy's selection engine runs (pure).

The engine runs once per `evaluationInterval`: its counters (consecutive violations,
dampening streaks) count evaluations, so our own writes, pod churn or agent reports
must not make it run faster. Three things cannot wait for the interval:

- the first evaluation, and the first after a spec change (`evaluation_due`);
- a serving pod newly seen with a request open longer than circuitBreaker.p99Threshold
  (`urgent_wait`): the breaker ejects such a pod at the first evaluation that sees it,
  so that evaluation runs at once. Once per stall (a pod still stalled at the last
  evaluation, say kept by the ejection cap, does not make every reconcile evaluate);
- with `topology.mode: latencyAware`, a local zone whose routed pods are newly over
  the margin (aviator.reconcilers.locality `spill_starting`): the evaluation that
  starts the spill's count runs at once. Such a policy is looked at every quarter of
  an interval between evaluations (`look_wait`), so a zone that turns slow just after
  an evaluation starts its count within a quarter interval of the latencies saying
  so: a spill after `spillAfter` evaluations comes at most `spillAfter - 0.75`
  intervals after the data, not `spillAfter`. Once per crossing: the count started,
  the zone is no longer newly over. A look that finds nothing newly over writes
  nothing (the plan's memos: docs/controller.md, "What a reconcile costs").

Urgent evaluations never come closer than `URGENT_GAP_S` to the previous one. An urgent
evaluation is an evaluation like any other: it counts for consecutiveViolations,
dampening and the zones' counts, and the next regular one comes an interval after it.
"""

from __future__ import annotations

from collections.abc import Set

# A requeue timer may fire a little early; an evaluation this close to due counts.
EARLY_FRACTION = 0.05
# Urgent evaluations never come closer together than this.
URGENT_GAP_S = 0.2
# How often in its interval a latency-aware policy is looked at (the evaluation included).
LOOKS_PER_INTERVAL = 4


def evaluation_due(
    *, evaluated: bool, next_evaluation: float | None, interval_s: float, now: float
) -> bool:
    """`evaluated`: the engine ran for the current spec generation."""
    return (
        not evaluated
        or next_evaluation is None
        or now >= next_evaluation - EARLY_FRACTION * interval_s
    )


def look_wait(*, last_evaluation: float, interval_s: float, now: float) -> float | None:
    """Seconds until the next look in the interval that began at `last_evaluation`
    (None: past its last look; the next evaluation comes first)."""
    step = interval_s / LOOKS_PER_INTERVAL
    for k in range(1, LOOKS_PER_INTERVAL):
        at = last_evaluation + k * step
        if at > now + EARLY_FRACTION * step:  # a timer a little early counts as on time
            return at - now
    return None


def gap_wait(*, last_evaluation: float, now: float) -> float:
    """Seconds until an urgent evaluation may run (0: now)."""
    return max(0.0, last_evaluation + URGENT_GAP_S - now)


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
    return gap_wait(last_evaluation=last_evaluation, now=now)
