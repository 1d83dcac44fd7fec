"""One evaluation: eligibility -> circuit breaker -> mode -> dampening -> safety floor.

Pure: no I/O, no clock (time is `now`), deterministic for equal inputs (pods are
processed in name order and ties are broken by name). See docs/selection.md.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aviator.selection import breaker, dampening, modes, safety
from aviator.selection.state import BreakerRecord, BreakerStatus, DampeningState, EngineState
from aviator.selection.types import (
    Conditions,
    Decision,
    DecisionKind,
    LatencyEstimate,
    PodInput,
    PodState,
    PodVerdict,
    Reason,
    SelectionPolicy,
)

_NAME = operator.attrgetter("name")


@dataclass(frozen=True, slots=True)
class Evaluation:
    active: frozenset[str]  # names of the pods that should serve
    pods: dict[str, PodVerdict]  # every input pod
    state: EngineState  # to pass to the next evaluation
    decisions: list[Decision]  # for Events
    conditions: Conditions


def known_latency(
    pod: PodInput, stale_after_s: float, stalled_after_ms: float = math.inf
) -> LatencyEstimate | None:
    """The pod's estimate if it is usable; stale data is unknown, never fast. An
    estimate without completed samples is usable only when its open request is older
    than `stalled_after_ms` (the breaker's p99Threshold, when it is on): a pod that
    never answered is stalled, not unknown."""
    lat = pod.latency
    if lat is None or lat.age_s > stale_after_s:
        return None
    if lat.samples <= 0 and not lat.oldest_open_ms > stalled_after_ms:
        return None
    return lat


def went_stale(pod: PodInput, stale_after_s: float) -> bool:
    """Whether the pod was measured and its data has since gone stale: told so by the
    caller (`PodInput.stale`), or an estimate older than the bound."""
    return pod.stale or (pod.latency is not None and pod.latency.age_s > stale_after_s)


def stalled_after_ms(policy: SelectionPolicy) -> float:
    """Open requests older than this make a pod violate (inf: breaker off)."""
    return policy.breaker.p99_threshold_ms if policy.breaker.enabled else math.inf


def evaluate(
    pods: Sequence[PodInput],
    current_active: frozenset[str],
    policy: SelectionPolicy,
    state: EngineState,
    now: float,
) -> Evaluation:
    """Choose the serving pods.

    `pods`: every pod of the target (any order, unique names); `current_active`: the
    pods serving now (names not in `pods` are ignored); `state`: the previous
    evaluation's `Evaluation.state` (or `EngineState()` the first time).
    """
    ordered = sorted(pods, key=_NAME)  # in name order already, usually: one pass
    present = {p.name for p in ordered}
    if len(present) != len(ordered):
        for a, b in itertools.pairwise(ordered):
            if a.name == b.name:
                raise ValueError(f"duplicate pod name {a.name!r}")
    eligible = [p for p in ordered if p.eligible]
    stall = stalled_after_ms(policy)
    latency = {p.name: known_latency(p, policy.stale_after_s, stall) for p in eligible}
    # The state is filed under pod keys (uids); the stages below work on names.
    key_of = {p.name: (p.name if state.by_name else p.key) for p in ordered}
    records = {n: state.breaker[k] for n, k in key_of.items() if k in state.breaker}
    damp_state = _by_name(state.dampening, key_of)

    # 1. Circuit breaker.
    brk = breaker.step(eligible, latency, policy.breaker, records, now, policy.min_endpoints)

    # 2. Mode over the measured pods the breaker lets through; unmeasured ones fail open,
    #    except stale ones that do not serve now: data that went stale is no reason to
    #    start serving (an agent restarting must not put slow pods back).
    #    The serving floor is part of the mode's target (safety).
    pool: list[tuple[str, LatencyEstimate]] = []
    unknown: list[str] = []
    kept_out: list[str] = []
    for pod in eligible:
        if pod.name in brk.out_of_traffic:
            continue
        lat = latency[pod.name]
        if lat is not None:
            pool.append((pod.name, lat))
        elif pod.name not in current_active and went_stale(pod, policy.stale_after_s):
            kept_out.append(pod.name)
        else:
            unknown.append(pod.name)
    pool_names = frozenset(n for n, _ in pool)
    incumbents = current_active & pool_names
    damp = policy.dampening
    # Without dampening the ranking ignores who serves now: pure p99, ties by name.
    if damp.enabled:
        mode = modes.select(pool, len(eligible), policy, incumbents, damp.keep_factor)
    else:
        mode = modes.select(pool, len(eligible), policy, frozenset(), 1.0)
    floor = safety.serving_floor(policy.min_endpoints, len(eligible))
    mode = safety.with_floor(mode, floor - len(unknown))

    # 3. Dampening (persistence) with its immediate bypasses.
    held = dampening.dampen(
        mode, incumbents, brk.readmitted, damp, damp_state, first=not state.evaluated
    )

    # 4. Safety floor, applied last so it always holds (stale pods kept out come last).
    active, floor_added = safety.fill_to_floor(
        held.chosen | frozenset(unknown), (*mode.ranked, *kept_out), floor
    )

    verdicts = _verdicts(
        ordered, brk.records, pool_names, unknown, kept_out, mode, active, floor_added
    )
    decisions = list(brk.decisions)
    if brk.overload and not state.overload:
        decisions.append(
            Decision(
                DecisionKind.OVERLOAD,
                "most pods break the circuit breaker's rules (p99 threshold "
                f"{policy.breaker.p99_threshold_ms:g} ms): treating it as overload, "
                "not ejecting more pods",
            )
        )
    current = current_active & present
    added, removed = tuple(sorted(active - current)), tuple(sorted(current_active - active))
    if added or removed:
        decisions.append(
            Decision(
                DecisionKind.SET_CHANGED,
                f"{len(active)} active: +{len(added)} -{len(removed)}",
                added=added,
                removed=removed,
            )
        )
    conditions = Conditions(
        no_eligible_pods=not eligible,
        no_latency_data=bool(eligible) and all(v is None for v in latency.values()),
        overload=brk.overload,
        pending=held.state.candidate,
        pending_streak=held.state.streak,
    )
    keys = key_of if not state.by_name else {p.name: p.key for p in ordered}
    new_state = EngineState(
        evaluated=True,
        overload=brk.overload,
        breaker={keys[n]: r for n, r in brk.records.items()},
        dampening=_by_key(held.state, keys),
    )
    return Evaluation(active, verdicts, new_state, decisions, conditions)


def _by_name(state: DampeningState, key_of: Mapping[str, str]) -> DampeningState:
    """The pending set by pod name; none when one of its pods is gone (the set can
    never win again, so its streak would restart anyway)."""
    if state.candidate is None:
        return state
    name_of = {k: n for n, k in key_of.items()}
    if not state.candidate <= name_of.keys():
        return DampeningState()
    return DampeningState(frozenset(name_of[k] for k in state.candidate), state.streak)


def _by_key(state: DampeningState, keys: Mapping[str, str]) -> DampeningState:
    if state.candidate is None:
        return state
    return DampeningState(frozenset(keys[n] for n in state.candidate), state.streak)


# Verdicts are immutable; sharing one instance per (state, reason) saves work at scale.
_VERDICTS = {(s, r): PodVerdict(s, r) for s in PodState for r in Reason}


_P99 = Reason.P99_ABOVE_THRESHOLD
# What an open record's `cause` says; "" (an older state) and anything unknown: p99.
_CAUSES = {
    r.value: r
    for r in (_P99, Reason.OPEN_REQUEST_ABOVE_THRESHOLD, Reason.ERROR_RATE_ABOVE_THRESHOLD)
}


def _verdicts(
    ordered: Sequence[PodInput],
    records: dict[str, BreakerRecord],
    pool: frozenset[str],
    unknown: Sequence[str],
    kept_out: Sequence[str],
    mode: modes.ModeResult,
    active: frozenset[str],
    floor_added: Sequence[str],
) -> dict[str, PodVerdict]:
    unknown_set = frozenset(unknown)
    kept_out_set = frozenset(kept_out)
    floor_set = frozenset(floor_added)
    out: dict[str, PodVerdict] = {}
    for pod in ordered:
        name = pod.name
        if pod.terminating:
            out[name] = _VERDICTS[PodState.STANDBY, Reason.TERMINATING]
        elif not pod.ready:
            out[name] = _VERDICTS[PodState.STANDBY, Reason.NOT_READY]
        elif name in unknown_set:
            out[name] = _VERDICTS[PodState.UNKNOWN, Reason.NO_LATENCY_DATA]
        elif name in kept_out_set:
            if name in floor_set:
                out[name] = _VERDICTS[PodState.UNKNOWN, Reason.MIN_ENDPOINTS]
            else:
                out[name] = _VERDICTS[PodState.STANDBY, Reason.LATENCY_STALE]
        elif name not in pool:
            rec = records[name]
            if rec.status is BreakerStatus.HALF_OPEN:
                out[name] = _VERDICTS[PodState.HALF_OPEN, Reason.RECOVERING]
            else:
                out[name] = _VERDICTS[PodState.EJECTED, _CAUSES.get(rec.cause, _P99)]
        elif name in active:
            if name in floor_set:
                reason = Reason.MIN_ENDPOINTS
            elif name in mode.chosen:
                reason = mode.reasons[name]
            else:
                reason = Reason.DAMPENED
            out[name] = _VERDICTS[PodState.ACTIVE, reason]
        elif name in mode.chosen:
            out[name] = _VERDICTS[PodState.STANDBY, Reason.DAMPENED]
        else:
            out[name] = _VERDICTS[PodState.STANDBY, mode.reasons[name]]
    return out
