"""Circuit breaker: eject pods that break its rules, readmit them later.

A pod is in violation (`violation`, checked in this order) when:

1. its oldest request still open is older than p99Threshold (OpenRequestAboveThreshold):
   a pod that stopped answering, seen before its clients give up. An open request is a
   fact, not a statistic of a window, so it needs no run of evaluations: the pod is a
   candidate for ejection at the first evaluation that sees it;
2. its p99 is above p99Threshold (P99AboveThreshold);
3. the error rule is on (errorRatePercent) and its window holds at least
   errorRateMinResponses responses with a status, of which at least errorRatePercent %
   are errors (ErrorRateAboveThreshold). Fewer responses are no evidence either way.

Per pod: closed --(in violation on `consecutiveViolations` fresh evaluations in a row;
rule 1 at once)--> open (ejected) --(recovery wait elapsed)--> halfOpen (out of
traffic, measured by keep-warm probes) --(fresh estimate in no violation)--> closed
(readmitted), or --(fresh estimate in violation)--> open again with the wait doubled.
Every rule counts alike for the run of violations, for readmission and for overload.

The wait after the k-th ejection in a row is recoveryInterval x min(2**(k-1), 10); the
count resets once a readmitted pod has stayed closed for 10 x recoveryInterval.
Evaluations without fresh samples change nothing. New ejections respect the cap and
stop during overload (see safety.py), stalled pods first, then error rates, then p99s,
worst first; if pods leave eligibility so that the ejected exceed the cap, the best of
them are released at once.

A full cap does not keep a stalled pod in traffic: a pod with a request open past
p99Threshold takes the place of a pod held out that has none now (released at once,
its backoff level kept; the least bad first: one breaking no rule now, the lowest
p99). Two pods answering at the threshold, held out by growing recovery waits, would
otherwise keep a hung pod serving until one of them recovered. Only an open request
displaces: it is a fact about the pod now, while a pod held out is judged on keep-warm
probes alone, which make a pod slow only under load look healthy; letting a p99 or
error-rate candidate displace it would have two such pods trade places at every
evaluation. A pod held out that is stalled now, or whose latency is unknown now, or
that was ejected again in this evaluation, keeps its place.

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
    Reason,
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

    new: dict[str, BreakerRecord] = dict(records)
    decisions: list[Decision] = []
    readmitted: list[str] = []
    candidates: list[tuple[tuple[int, float], str, Reason]] = []
    ejected_now: set[str] = set()  # half-open pods sent back out in this evaluation
    violating = 0

    for pod in eligible:
        name = pod.name
        rec = records.get(name)
        lat = latency.get(name)
        broken = violation(lat, policy)
        if broken is not None:
            violating += 1
        fresh = lat is not None and pod.fresh
        if rec is None:
            if broken is None or not fresh:
                continue  # healthy and never ejected: nothing to remember (the common case)
            rec = _CLOSED
        if rec.status is BreakerStatus.OPEN:
            assert rec.since is not None
            if now - rec.since >= recovery_wait(policy, rec.level):
                rec = replace(rec, status=BreakerStatus.HALF_OPEN, since=now)
        elif rec.status is BreakerStatus.HALF_OPEN:
            if fresh and lat is not None:
                if broken is not None:
                    rec = BreakerRecord(BreakerStatus.OPEN, 0, now, rec.level + 1, broken.value)
                    decisions.append(_ejected(name, f"still {describe(broken, lat, policy)}"))
                    ejected_now.add(name)
                else:
                    rec = BreakerRecord(BreakerStatus.CLOSED, 0, now, rec.level)
                    readmitted.append(name)
                    decisions.append(_readmitted(name, _recovered(lat, policy)))
        else:
            rec = _decay(rec, policy, now)
            if fresh and lat is not None:
                rec = replace(rec, violations=rec.violations + 1 if broken else 0)
                if broken is not None and (
                    broken is Reason.OPEN_REQUEST_ABOVE_THRESHOLD
                    or rec.violations >= policy.consecutive_violations
                ):
                    candidates.append((_severity(broken, lat), name, broken))
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
        # Stalled pods first, then error rates, then p99s, worst first, so the cap
        # removes the worst pods.
        candidates.sort(key=lambda c: (c[0], c[1]))
        held = [n for n in out if n not in ejected_now]
        room = cap - len(out)
        for _, name, broken in candidates:
            if room <= 0:
                # Stalled candidates come first; only they displace (module docstring).
                if broken is not Reason.OPEN_REQUEST_ABOVE_THRESHOLD:
                    break
                freed = _displaced_by_stalled(held, latency, policy)
                if freed is None:
                    break
                held.remove(freed)
                out.remove(freed)
                new[freed] = BreakerRecord(BreakerStatus.CLOSED, 0, now, new[freed].level)
                readmitted.append(freed)
                decisions.append(
                    _readmitted(
                        freed,
                        f"ejection cap is {cap} of {len(eligible)} pods: released to make room "
                        f"for {name}, which has a request open past the threshold",
                    )
                )
                # The freed place is this candidate's: room stays at 0.
            else:
                room -= 1
            rec = new[name]
            lat = latency[name]
            assert lat is not None
            new[name] = BreakerRecord(BreakerStatus.OPEN, 0, now, rec.level + 1, broken.value)
            out.append(name)
            note = describe(broken, lat, policy)
            if broken is not Reason.OPEN_REQUEST_ABOVE_THRESHOLD:
                note += f" on {rec.violations} consecutive evaluations"
            decisions.append(_ejected(name, note))

    decisions.sort(key=lambda d: (d.pod or "", d.kind.value))
    return BreakerOutcome(
        records={n: r for n, r in new.items() if not r.is_default},
        out_of_traffic=frozenset(out),
        readmitted=frozenset(readmitted),
        decisions=decisions,
        overload=overload,
    )


def violation(lat: LatencyEstimate | None, policy: BreakerPolicy) -> Reason | None:
    """The first rule (see the module docstring) a known estimate breaks; None when it
    breaks none or is unknown."""
    if lat is None:
        return None
    threshold = policy.p99_threshold_ms
    if lat.oldest_open_ms > threshold:
        return Reason.OPEN_REQUEST_ABOVE_THRESHOLD
    if lat.p99_ms > threshold:
        return Reason.P99_ABOVE_THRESHOLD
    limit = policy.error_rate_percent
    if (
        limit is not None
        and lat.statuses >= policy.error_rate_min_responses
        and 100 * lat.errors >= limit * lat.statuses
    ):
        return Reason.ERROR_RATE_ABOVE_THRESHOLD
    return None


def describe(broken: Reason, lat: LatencyEstimate, policy: BreakerPolicy) -> str:
    """The violation in words, with the figures that made it (for Events)."""
    threshold = policy.p99_threshold_ms
    if broken is Reason.OPEN_REQUEST_ABOVE_THRESHOLD:
        return f"a request open for {lat.oldest_open_ms:.0f} ms, longer than {threshold:g} ms"
    if broken is Reason.ERROR_RATE_ABOVE_THRESHOLD:
        return (
            f"{lat.error_percent or 0.0:.1f} % errors of {lat.statuses} responses, at least "
            f"{policy.error_rate_percent:g} %"
        )
    return f"p99 {lat.p99_ms:.1f} ms above {threshold:g} ms"


def _recovered(lat: LatencyEstimate, policy: BreakerPolicy) -> str:
    note = f"p99 {lat.p99_ms:.1f} ms back under {policy.p99_threshold_ms:g} ms"
    rate = lat.error_percent
    if policy.error_rate_percent is not None and rate is not None:
        note += f", {rate:.1f} % errors of {lat.statuses} responses"
    return note


_ORDER = {
    Reason.OPEN_REQUEST_ABOVE_THRESHOLD: 0,
    Reason.ERROR_RATE_ABOVE_THRESHOLD: 1,
    Reason.P99_ABOVE_THRESHOLD: 2,
}


def _severity(broken: Reason, lat: LatencyEstimate) -> tuple[int, float]:
    """Sort key of an ejection candidate: lower is worse."""
    if broken is Reason.OPEN_REQUEST_ABOVE_THRESHOLD:
        return _ORDER[broken], -lat.oldest_open_ms
    if broken is Reason.ERROR_RATE_ABOVE_THRESHOLD:
        return _ORDER[broken], -(lat.error_percent or 0.0)
    return _ORDER[broken], -lat.p99_ms


def _displaced_by_stalled(
    held: Sequence[str],
    latency: Mapping[str, LatencyEstimate | None],
    policy: BreakerPolicy,
) -> str | None:
    """The pod held out that a stalled candidate takes the place of (module
    docstring): of those with a known estimate and no request open past the threshold,
    one breaking no rule before one that does, then the lowest p99, then by name;
    None if there is none."""
    options: list[tuple[bool, float, str]] = []
    for name in held:
        lat = latency.get(name)
        if lat is None:
            continue  # nothing known now: no ground to say it is better
        broken = violation(lat, policy)
        if broken is not Reason.OPEN_REQUEST_ABOVE_THRESHOLD:
            options.append((broken is not None, lat.p99_ms, name))
    return min(options)[2] if options else None


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
