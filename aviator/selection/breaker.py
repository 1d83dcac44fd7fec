"""Circuit breaker: eject pods whose p99 stays above a threshold, readmit them later.

Per pod: closed --(p99 > threshold on `consecutiveViolations` fresh evaluations in a
row)--> open (ejected) --(recovery wait elapsed)--> halfOpen (out of traffic, measured
by keep-warm probes) --(fresh p99 <= threshold)--> closed (readmitted), or
--(fresh p99 > threshold)--> open again with the wait doubled.

The wait after the k-th ejection in a row is recoveryInterval x min(2**(k-1), 10); the
count resets once a readmitted pod has stayed closed for 10 x recoveryInterval.
Evaluations without fresh samples change nothing. New ejections respect the cap and
stop during overload (see safety.py); if pods leave eligibility so that the ejected
exceed the cap, the best of them are released at once.

Pods that are present but not eligible keep their record unchanged until they are
eligible again; records of pods that are gone are dropped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from aviator.selection.safety import ejection_cap, is_overloaded
from aviator.selection.state import BreakerRecord, BreakerStatus
from aviator.selection.types import (
    MAX_BACKOFF_FACTOR,
    BreakerPolicy,
    Decision,
    DecisionKind,
    LatencyEstimate,
    PodInput,
)

_CLOSED = BreakerRecord()


@dataclass(frozen=True, slots=True)
class BreakerOutcome:
    records: dict[str, BreakerRecord]  # non-default records only
    out_of_traffic: frozenset[str]  # eligible pods that are open or halfOpen
    readmitted: frozenset[str]  # eligible pods closed again in this evaluation
    decisions: list[Decision]
    overload: bool


def recovery_wait(policy: BreakerPolicy, level: int) -> float:
    """How long the k-th ejection in a row (level k >= 1) stays open."""
    factor = min(2.0 ** max(0, level - 1), MAX_BACKOFF_FACTOR)
    return policy.recovery_interval_s * factor


def step(
    eligible: Sequence[PodInput],
    latency: Mapping[str, LatencyEstimate | None],
    policy: BreakerPolicy,
    records: Mapping[str, BreakerRecord],
    now: float,
    min_endpoints: int,
) -> BreakerOutcome:
    """Advance every eligible pod's breaker by one evaluation.

    `eligible` is sorted by name; `latency` holds known (non-stale) estimates;
    `records` holds the previous records of pods that still exist.
    """
    if not policy.enabled:
        return _disabled(eligible, records)

    threshold = policy.p99_threshold_ms
    new: dict[str, BreakerRecord] = dict(records)
    decisions: list[Decision] = []
    readmitted: list[str] = []
    candidates: list[tuple[float, str]] = []
    violating = 0

    for pod in eligible:
        name = pod.name
        rec = records.get(name)
        lat = latency.get(name)
        slow = lat is not None and lat.p99_ms > threshold
        if slow:
            violating += 1
        fresh = lat is not None and pod.fresh
        if rec is None:
            if not slow or not fresh:
                continue  # healthy and never ejected: nothing to remember (the common case)
            rec = _CLOSED
        if rec.status is BreakerStatus.OPEN:
            assert rec.since is not None
            if now - rec.since >= recovery_wait(policy, rec.level):
                rec = replace(rec, status=BreakerStatus.HALF_OPEN, since=now)
        elif rec.status is BreakerStatus.HALF_OPEN:
            if fresh and lat is not None:
                if slow:
                    rec = BreakerRecord(BreakerStatus.OPEN, 0, now, rec.level + 1)
                    decisions.append(
                        _ejected(name, f"p99 {lat.p99_ms:.1f} ms still above {threshold:g} ms")
                    )
                else:
                    rec = BreakerRecord(BreakerStatus.CLOSED, 0, now, rec.level)
                    readmitted.append(name)
                    decisions.append(
                        _readmitted(name, f"p99 {lat.p99_ms:.1f} ms back under {threshold:g} ms")
                    )
        else:
            rec = _decay(rec, policy, now)
            if fresh and lat is not None:
                rec = replace(rec, violations=rec.violations + 1 if slow else 0)
                if slow and rec.violations >= policy.consecutive_violations:
                    candidates.append((lat.p99_ms, name))
        new[name] = rec

    overload = is_overloaded(violating, len(eligible))
    names = {p.name for p in eligible}
    out = sorted(n for n, r in new.items() if r.out_of_traffic and n in names)
    cap = ejection_cap(policy.max_ejection_percent, len(eligible), min_endpoints)

    if len(out) > cap:
        # Fewer eligible pods than when they were ejected: serve the least bad again.
        def release_order(name: str) -> tuple[float, str]:
            lat = latency.get(name)
            return (math.inf if lat is None else lat.p99_ms, name)

        for name in sorted(out, key=release_order)[: len(out) - cap]:
            new[name] = BreakerRecord(BreakerStatus.CLOSED, 0, now, new[name].level)
            readmitted.append(name)
            decisions.append(_readmitted(name, f"ejection cap is {cap} of {len(eligible)} pods"))
            out.remove(name)
    elif not overload and candidates:
        # Worst first, so the cap removes the slowest pods.
        candidates.sort(key=lambda c: (-c[0], c[1]))
        for p99, name in candidates[: cap - len(out)]:
            rec = new[name]
            new[name] = BreakerRecord(BreakerStatus.OPEN, 0, now, rec.level + 1)
            out.append(name)
            decisions.append(
                _ejected(
                    name,
                    f"p99 {p99:.1f} ms above {threshold:g} ms on "
                    f"{rec.violations} consecutive evaluations",
                )
            )

    decisions.sort(key=lambda d: (d.pod or "", d.kind.value))
    return BreakerOutcome(
        records={n: r for n, r in new.items() if not r.is_default},
        out_of_traffic=frozenset(out),
        readmitted=frozenset(readmitted),
        decisions=decisions,
        overload=overload,
    )


def _decay(rec: BreakerRecord, policy: BreakerPolicy, now: float) -> BreakerRecord:
    """Forget past ejections once the pod has behaved for the longest backoff."""
    if rec.since is not None and now - rec.since >= MAX_BACKOFF_FACTOR * policy.recovery_interval_s:
        return replace(rec, since=None, level=0)
    return rec


def _disabled(eligible: Sequence[PodInput], records: Mapping[str, BreakerRecord]) -> BreakerOutcome:
    # Turning the breaker off readmits everything at once and forgets all records.
    back = sorted(p.name for p in eligible if records.get(p.name, _CLOSED).out_of_traffic)
    return BreakerOutcome(
        records={},
        out_of_traffic=frozenset(),
        readmitted=frozenset(back),
        decisions=[_readmitted(n, "circuit breaker disabled") for n in back],
        overload=False,
    )


def _ejected(pod: str, message: str) -> Decision:
    return Decision(DecisionKind.EJECTED, message, pod=pod)


def _readmitted(pod: str, message: str) -> Decision:
    return Decision(DecisionKind.READMITTED, message, pod=pod)
