"""A policy's evaluation: the bridge from the API model to the selection engine.

Turns a raw AviatorPolicy into a typed spec (defaults and validation from aviator.api)
and raw Pods plus latency estimates into the engine's inputs, and the engine's
Evaluation back into what the reconciler acts on (active set, per-pod states, Events,
persisted state). Pure: no I/O.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from aviator.api.codec import PolicyError
from aviator.api.types import AviatorPolicySpec
from aviator.kube.objects import JSON
from aviator.reconcilers.fixedpoint import FixedPoint
from aviator.reconcilers.podfacts import PodFacts, timestamp
from aviator.selection import evaluate
from aviator.selection.state import EngineState
from aviator.selection.types import (
    BreakerPolicy,
    DampeningPolicy,
    DecisionKind,
    LatencyEstimate,
    LoadCombine,
    Mode,
    PodInput,
    SelectionPolicy,
)

log = logging.getLogger(__name__)


class InvalidSpec(ValueError):
    """The policy's spec cannot be used; the message names the fields."""


@dataclass(frozen=True)
class ParsedPolicy:
    """A policy's spec, typed, and the engine's parameters from it. Parsed once per
    generation (`ParsedPolicies`) and read by every reconcile: what is derived from
    it is derived once (cached properties)."""

    spec: AviatorPolicySpec
    selection: SelectionPolicy

    @functools.cached_property
    def target(self) -> str:
        return self.spec.target_ref.name

    @functools.cached_property
    def mode(self) -> str:
        return str(self.spec.routing.mode)

    @functools.cached_property
    def routed_service(self) -> str:
        return self.spec.routed_service

    @functools.cached_property
    def interval_s(self) -> float:
        return self.spec.evaluation_interval.seconds

    @property
    def latency_source(self) -> str:
        return str(self.spec.latency_source)

    @property
    def probe_port(self) -> int:
        return self.spec.target_port

    @property
    def probe_path(self) -> str:
        return self.spec.probe_path


@dataclass(frozen=True)
class EngineEvent:
    reason: str  # PodEjected | PodReadmitted
    message: str
    pod: str | None
    action: str


@dataclass
class Outcome:
    active: set[str]
    states: dict[str, str]
    reasons: dict[str, str]
    events: list[EngineEvent] = field(default_factory=list)
    engine_state: JSON = field(default_factory=dict)
    overload: str | None = None
    pending: str | None = None


def parse_policy(raw: Mapping[str, Any]) -> ParsedPolicy:
    try:
        spec = AviatorPolicySpec.from_dict(raw.get("spec"))
    except PolicyError as exc:
        raise InvalidSpec(str(exc)) from exc
    # The schema has no targetRef.namespace (the API server prunes or refuses it); an
    # older, schema-less CRD could let one through. A policy never reaches across
    # namespaces: that would let anyone with policy rights re-route others' Services.
    ref = (raw.get("spec") or {}).get("targetRef") or {}
    own_ns = (raw.get("metadata") or {}).get("namespace")
    if isinstance(ref, Mapping) and ref.get("namespace") not in (None, "", own_ns):
        raise InvalidSpec(
            f"spec.targetRef.namespace: a policy targets Services in its own namespace "
            f"({own_ns}) only, not {ref.get('namespace')!r}"
        )
    try:
        mode = Mode(str(spec.selection.mode))
        # selection.topN and selection.percentage always carry defaults, so "a budget
        # if one is set" cannot be told from the object. topN is topN mode's alone;
        # percentage is also prequal's budget: every cold pod would include the slow
        # ones nobody sends requests to (idle is the coldest there is).
        selection = SelectionPolicy(
            mode=mode,
            top_n=spec.selection.top_n if mode is Mode.TOP_N else None,
            percentage=(
                spec.selection.percentage if mode in (Mode.PERCENTAGE, Mode.PREQUAL) else None
            ),
            latency_threshold_ms=spec.latency_threshold.seconds * 1000.0,
            rif_quantile=spec.selection.prequal.rif_quantile,
            load_combine=(
                None
                if (load := spec.selection.prequal.load) is None
                else LoadCombine(str(load.combine))
            ),
            load_weight=1.0 if load is None else load.weight,
            min_endpoints=spec.min_endpoints,
            breaker=BreakerPolicy(
                enabled=spec.circuit_breaker.enabled,
                p99_threshold_ms=spec.circuit_breaker.p99_threshold.seconds * 1000.0,
                consecutive_violations=spec.circuit_breaker.consecutive_violations,
                recovery_interval_s=spec.circuit_breaker.recovery_interval.seconds,
                max_ejection_percent=spec.circuit_breaker.max_ejection_percent,
                error_rate_percent=spec.circuit_breaker.error_rate_percent,
                error_rate_min_responses=spec.circuit_breaker.error_rate_min_responses,
            ),
            dampening=DampeningPolicy(
                enabled=spec.dampening.enabled,
                threshold_percent=float(min(spec.dampening.threshold_percent, 99)),
                consecutive_intervals=spec.dampening.consecutive_intervals,
            ),
        )
    except ValueError as exc:
        # The API's rules hold every bound the engine checks; a message of the engine
        # still names the spec field it came from, never an internal name.
        raise InvalidSpec(spec_message(str(exc))) from exc
    return ParsedPolicy(spec=spec, selection=selection)


class ParsedPolicies:
    """`of(policy)`: `parse_policy(policy)`, parsed once per policy uid and generation.

    The parse reads the spec and the namespace only; the API server bumps
    `metadata.generation` at every spec change (and never at a status write), so a
    policy's (uid, generation) names one parse. A policy object without both is parsed
    every time. An invalid spec is remembered by its message and raised anew. Holds at
    most `limit` entries; over it, it starts afresh (a parse per policy, once).
    """

    def __init__(self, limit: int = 65_536) -> None:
        self.limit = limit
        self._by_key: dict[tuple[str, int], ParsedPolicy | str] = {}
        self.parses = 0  # policies parsed afresh (for tests and benchmarks)

    def __len__(self) -> int:
        return len(self._by_key)

    def of(self, policy: Mapping[str, Any]) -> ParsedPolicy:
        meta = policy.get("metadata") or {}
        uid, generation = meta.get("uid"), meta.get("generation")
        if not uid or not isinstance(generation, int):
            self.parses += 1
            return parse_policy(policy)
        key = (str(uid), generation)
        known = self._by_key.get(key)
        if known is None:
            self.parses += 1
            try:
                known = parse_policy(policy)
            except InvalidSpec as exc:
                known = str(exc)
            if len(self._by_key) >= self.limit:
                self._by_key.clear()
            self._by_key[key] = known
        if isinstance(known, str):
            raise InvalidSpec(known)
        return known


# The engine's parameter names (aviator.selection.types) and the spec fields they come from.
SPEC_FIELDS = {
    "top_n": "spec.selection.topN",
    "percentage": "spec.selection.percentage",
    "latency_threshold_ms": "spec.latencyThreshold",
    "rif_quantile": "spec.selection.prequal.rifQuantile",
    "load_weight": "spec.selection.prequal.load.weight",
    "min_endpoints": "spec.minEndpoints",
    "p99_threshold_ms": "spec.circuitBreaker.p99Threshold",
    "consecutive_violations": "spec.circuitBreaker.consecutiveViolations",
    "recovery_interval_s": "spec.circuitBreaker.recoveryInterval",
    "max_ejection_percent": "spec.circuitBreaker.maxEjectionPercent",
    "error_rate_percent": "spec.circuitBreaker.errorRatePercent",
    "error_rate_min_responses": "spec.circuitBreaker.errorRateMinResponses",
    "threshold_percent": "spec.dampening.thresholdPercent",
    "consecutive_intervals": "spec.dampening.consecutiveIntervals",
}


def spec_message(message: str) -> str:
    name, _, rest = message.partition(" ")
    field = SPEC_FIELDS.get(name)
    return f"{field}: {rest}" if field else f"spec: {message}"


def _created(obj: JSON) -> float:
    raw = obj.get("metadata", {}).get("creationTimestamp")
    return timestamp(str(raw)) if raw else 0.0


def pod_input(
    pod: PodFacts,
    latency: LatencyEstimate | None,
    fresh: bool,
    silent: bool = False,
    stale_after_s: float = math.inf,
) -> PodInput:
    """The engine's input for `pod`: one of the last two built from this pod object
    whose freshness and silence are the same and whose estimate says the same (equal,
    which is at any age, and on the same side of `stale_after_s`, the one thing the
    engine reads of its age); else built afresh. Two: a pod reported a little slower
    than its policy evaluates has fresh data at one evaluation and none at the next
    (aviator.reconcilers.fixedpoint)."""
    for held in pod.inputs:
        if held[1] is fresh and held[2] is silent and _reads_alike(held[0], latency, stale_after_s):
            return held[3]
    built = engine_input(pod, latency, fresh, silent)
    pod.inputs = ((latency, fresh, silent, built), *pod.inputs[:1])
    return built


def _reads_alike(
    a: LatencyEstimate | None, b: LatencyEstimate | None, stale_after_s: float
) -> bool:
    if a is b:
        return True
    if a is None or b is None or a != b:
        return False
    return (a.age_s > stale_after_s) == (b.age_s > stale_after_s)


def engine_input(
    pod: PodFacts, latency: LatencyEstimate | None, fresh: bool, silent: bool = False
) -> PodInput:
    """The engine's input for `pod`, built afresh (`silent`: see PodLatencies.silent)."""
    return PodInput(
        name=pod.name,
        ip=pod.ip,
        node=pod.node,
        ready=pod.ready,
        terminating=pod.terminating,
        created=pod.created,
        # Without completed samples only an open request speaks (the engine decides).
        latency=None
        if latency is None or (latency.samples <= 0 and not latency.oldest_open_ms)
        else latency,
        fresh=fresh,
        stale=silent,
        # The engine files its memory of a pod under the uid: a pod recreated under
        # the same name (a StatefulSet's) does not inherit its predecessor's ejection.
        uid=pod.uid,
    )


def load_state(persisted: Mapping[str, Any] | None) -> EngineState:
    if not persisted:
        return EngineState()
    try:
        return EngineState.from_dict(persisted)
    except (ValueError, TypeError) as exc:
        log.warning("stored engine state unreadable (%s); starting fresh", exc)
        return EngineState()


_EVENT_REASONS = {
    DecisionKind.EJECTED: ("PodEjected", "Eject"),
    DecisionKind.READMITTED: ("PodReadmitted", "Readmit"),
}


def select(
    parsed: ParsedPolicy,
    pods: Sequence[PodFacts],
    latencies: Mapping[str, LatencyEstimate | None],
    fresh: Mapping[str, bool],
    current_active: set[str],
    persisted: Mapping[str, Any] | None,
    now: float,
    silent: Collection[str] = frozenset(),
    held: tuple[FixedPoint, ...] = (),
) -> tuple[Outcome, tuple[FixedPoint, ...]]:
    """Run the engine over the eligible `pods` (`silent`: see PodLatencies.silent); the
    outcome, and the fixed points to remember (fixedpoint.py). While one of `held` (the
    last ones) holds for these inputs, its outcome is the answer."""
    selection = parsed.selection
    stale = selection.stale_after_s
    inputs = [
        pod_input(p, latencies.get(p.name), fresh.get(p.name, True), p.name in silent, stale)
        for p in pods
    ]
    names = {i.name for i in inputs}
    active = frozenset(current_active & names)
    for point in held:
        if point.holds(inputs, active, selection, persisted):
            return cast(Outcome, point.result), held
    given = load_state(persisted)
    evaluation = evaluate(inputs, active, selection, given, now)
    states = {name: str(v.state) for name, v in evaluation.pods.items()}
    reasons = {name: str(v.reason) for name, v in evaluation.pods.items()}
    events: list[EngineEvent] = []
    overload: str | None = None
    for d in evaluation.decisions:
        if d.kind in _EVENT_REASONS:
            reason, action = _EVENT_REASONS[d.kind]
            events.append(EngineEvent(reason, d.message, d.pod, action))
        elif d.kind is DecisionKind.OVERLOAD:
            overload = d.message
    cond = evaluation.conditions
    if cond.overload and overload is None:
        overload = "most eligible pods break the circuit breaker's rules: overload, not outliers; ejections paused"
    pending = None
    if cond.pending is not None:
        pending = (
            f"dampening: set {sorted(cond.pending)} has won {cond.pending_streak} of "
            f"{selection.dampening.consecutive_intervals} evaluations"
        )
    # A state left as it was given keeps the object it was given in: the fixed points
    # of other inputs from that state still hold (fixedpoint.py, `FixedPoint.kept`).
    unchanged = evaluation.state == given
    same = persisted if unchanged and isinstance(persisted, dict) else None
    outcome = Outcome(
        active=set(evaluation.active),
        states=states,
        reasons=reasons,
        events=events,
        engine_state=same if same is not None else evaluation.state.to_dict(),
        overload=overload,
        pending=pending,
    )
    fixed = FixedPoint.of(
        inputs,
        active,
        selection,
        unchanged,
        evaluation.state,
        evaluation.active,
        bool(evaluation.decisions),
        outcome.engine_state,
        outcome,
    )
    return outcome, FixedPoint.kept(fixed, held)


def stalled_pods(
    parsed: ParsedPolicy, latencies: Mapping[str, LatencyEstimate | None]
) -> frozenset[str]:
    """Pods whose oldest open request is older than the breaker's p99Threshold (none
    while the breaker is off): the engine's first rule, seen before it runs."""
    breaker = parsed.selection.breaker
    if not breaker.enabled:
        return frozenset()
    limit = breaker.p99_threshold_ms
    return frozenset(
        n for n, lat in latencies.items() if lat is not None and lat.oldest_open_ms > limit
    )


def carry_over(previous: Outcome, eligible: set[str], floor: int) -> Outcome | None:
    """The previous result, without running the engine (between evaluations), while
    every serving pod is still eligible. None when a serving pod left (or the floor is
    not met): then the engine decides at once, so the pod is replaced now rather than
    at the next interval."""
    active = previous.active & eligible
    if active != previous.active or not active or len(active) < floor:
        return None
    states = {n: s for n, s in previous.states.items() if n in eligible}
    reasons = {n: r for n, r in previous.reasons.items() if n in eligible}
    for name in eligible - set(states):
        states[name], reasons[name] = "standby", "AwaitingEvaluation"
    return Outcome(
        active=active,
        states=states,
        reasons=reasons,
        events=[],
        engine_state=previous.engine_state,
        overload=previous.overload,
        pending=previous.pending,
    )


def freshness(
    latencies: Mapping[str, LatencyEstimate | None],
    reported: Mapping[str, float],
    last_evaluation: float | None,
) -> dict[str, bool]:
    """Per pod: did samples arrive since the previous evaluation (at `last_evaluation`;
    `reported`: when each estimate's newest report came, on the same clock; a pod not
    in it, as of the read)? Only fresh data moves the circuit breaker, so one slow
    window is not counted twice."""
    return {
        name: lat is not None
        and (last_evaluation is None or reported.get(name, math.inf) > last_evaluation)
        for name, lat in latencies.items()
    }
