"""AviatorPolicy status: what one evaluation found, and whether it is worth a write.

Pure. The status is the API's typed `AviatorPolicyStatus`, rebuilt from scratch on
every reconcile and serialised through the API codec; `status_changed` decides
whether it differs from what the API server holds in a way a reader cares about.

Write policy (steady state makes ZERO status writes):
- `lastEvaluationTime` is written only together with another change;
- latency figures (p50/p99 per pod, per zone and for the active set) count as changed only when
  they move by more than `LATENCY_TOLERANCE` (relative) — histogram quantiles hop
  between neighbouring buckets under ordinary jitter, and a status write per interval
  per policy would be pure noise for the API server;
- per-pod requests in flight (display only) count as changed only when they move by
  more than half (and more than 2); the counts over the latency window (samples,
  responses, keep-warm and kubelet probe samples; display only) only when one is more
  than `WINDOW_COUNT_RATIO` times the other (and they differ by more than 2), or
  samples appear/vanish: a window holds one report more or less from one reconcile
  to the next, and with paced reports (aviator.agent.reportpacing) each report holds
  several seconds, so its counts move by twice or three times without any change in
  the traffic; a pod's oldest open request like a latency; its error rate only when
  it moves by more than `ERROR_RATE_TOLERANCE` percentage points;
- everything else (active/total, source, pod states and reasons, conditions,
  observedGeneration, the persisted engine state) is compared exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aviator.api.codec import decode
from aviator.api.status import (
    AviatorPolicyStatus,
    Condition,
    HandOffStatus,
    PodStatus,
    TakeoverStatus,
    ZoneStatus,
)
from aviator.kube import mergepatch
from aviator.kube.objects import JSON

# Condition types and reasons (docs/controller.md, "Status and Events").
READY = "Ready"
DEGRADED = "Degraded"
REASON_ROUTING = "Routing"
REASON_AS_EXPECTED = "AsExpected"
REASON_SERVICE_NOT_FOUND = "ServiceNotFound"
REASON_NO_ELIGIBLE_PODS = "NoEligiblePods"
REASON_OVERLOAD = "Overload"
REASON_SELECTOR_RESTORED = "SelectorRestored"
REASON_NO_LATENCY_DATA = "NoLatencyData"
# Pods without data on nodes whose agent reports full BPF maps (they may never get any).
REASON_AGENT_MAPS_FULL = "AgentMapsFull"
REASON_CONFLICT = "Conflict"
REASON_INVALID_SPEC = "InvalidSpec"
REASON_NO_SELECTOR = "ServiceHasNoSelector"
# Present while some measured pods speak no protocol the agent recognises.
OPAQUE_LATENCY = "OpaqueLatency"
REASON_NO_RECOGNISED_FRAMING = "NoRecognisedFraming"

# Problems that stop routing (Ready=False) versus ones that only degrade it.
BLOCKING = (
    REASON_INVALID_SPEC,
    REASON_CONFLICT,
    REASON_SERVICE_NOT_FOUND,
    REASON_NO_SELECTOR,
    REASON_NO_ELIGIBLE_PODS,
)

LATENCY_TOLERANCE = 0.10
ERROR_RATE_TOLERANCE = 1.0
COUNT_TOLERANCE = 0.5
WINDOW_COUNT_RATIO = 4.0
MAX_POD_ROWS = 500  # keeps the status object far below the API server's size limit


@dataclass(frozen=True)
class Problem:
    """A reason to report in the conditions, with a human sentence."""

    reason: str
    message: str


def pod_status(
    name: str,
    ip: str,
    node: str,
    state: str,
    *,
    p50_ms: float | None = None,
    p99_ms: float | None = None,
    rif: int | None = None,
    load: float | None = None,
    samples: int = 0,
    reason: str | None = None,
    protocol: str | None = None,
    responses: int | None = None,
    error_rate_percent: float | None = None,
    oldest_open_ms: float | None = None,
    keep_warm_samples: int | None = None,
    probe_samples: int | None = None,
    probe_p50_ms: float | None = None,
    probe_p99_ms: float | None = None,
) -> PodStatus:
    """One pod as `kubectl describe avp` shows it (latencies to the microsecond, error
    rates to a tenth of a percent)."""
    return PodStatus(
        name=name,
        ip=ip,
        node=node,
        state=state,
        p50_ms=None if p50_ms is None else round(p50_ms, 3),
        p99_ms=None if p99_ms is None else round(p99_ms, 3),
        rif=rif,
        load=None if load is None else round(load, 3),
        samples=samples,
        reason=reason or None,
        protocol=protocol or None,
        responses=responses,
        error_rate_percent=None if error_rate_percent is None else round(error_rate_percent, 1),
        oldest_open_ms=None if not oldest_open_ms else round(oldest_open_ms, 3),
        keep_warm_samples=keep_warm_samples,
        probe_samples=probe_samples,
        probe_p50_ms=None if probe_p50_ms is None else round(probe_p50_ms, 3),
        probe_p99_ms=None if probe_p99_ms is None else round(probe_p99_ms, 3),
    )


@dataclass(frozen=True)
class Observation:
    """Everything one reconcile learned that the status reports."""

    generation: int
    now_iso: str
    active: int = 0
    total: int = 0
    p99_ms: float | None = None
    source: str = "none"
    problems: Sequence[Problem] = ()
    pods: Sequence[PodStatus] = ()
    routed_service: str | None = None
    engine_state: Mapping[str, Any] | None = None
    takeover: JSON | None = None  # status.takeover (aviator.reconcilers.takeover.Record)
    hand_offs: Sequence[HandOffStatus] = ()
    opaque: Sequence[str] = ()  # measured pods whose protocol is opaque
    zones: Sequence[ZoneStatus] = ()  # topology.mode latencyAware (aviator.reconcilers.locality)
    # When `pods` holds only the rows the status shows (the first MAX_POD_ROWS in its
    # order, aviator.reconcilers.reporting.status_rows): every ejected pod's name and
    # how many pods have samples, which the rows alone no longer tell (None: from
    # `pods`, which then holds every row).
    ejected: Sequence[str] | None = None
    measured: int | None = None


def opaque_message(pods: Sequence[str], measured: int) -> str:
    """What an opaque pod's latency means (the OpaqueLatency condition's message)."""
    shown = ", ".join(sorted(pods)[:10]) + (", ..." if len(pods) > 10 else "")
    return (
        f"{len(pods)} of {measured} measured pods ({shown}) speak no protocol the agent "
        "recognises (not HTTP/1.1, h2c or gRPC: TLS, for one): their latency is the time "
        "from a request's first bytes to the first response bytes on its connection, "
        "with no framing to tell requests apart (multiplexed requests look faster than "
        "they are), and no response status is read, so circuitBreaker.errorRatePercent "
        "cannot judge them"
    )


_MAP_FLAGS = {"endpoints": "--max-endpoints", "h2conns": "--max-h2-connections"}


def unmeasurable_message(pods: Mapping[str, tuple[str, tuple[str, ...]]]) -> str:
    """Why pods have no latency data: their node's agent has full BPF maps (pod name ->
    (node, the maps)); the AgentMapsFull problem's message."""
    names = sorted(pods)
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    by_node: dict[str, set[str]] = {}
    for node, maps in pods.values():
        by_node.setdefault(node, set()).update(maps)
    nodes = sorted(by_node)
    where = "; ".join(f"node {n}: {', '.join(sorted(by_node[n]))}" for n in nodes[:5])
    flags = sorted({_MAP_FLAGS.get(m, m) for maps in by_node.values() for m in maps})
    return (
        f"{len(names)} pods ({shown}) cannot be measured: the agent of their node has "
        f"full BPF maps ({where}{'; ...' if len(nodes) > 5 else ''}), so their requests "
        f"are not counted; they are kept serving. Raise the agent's {' and '.join(flags)}"
    )


def effective_source(sources: Iterable[str | None]) -> str:
    """ebpf / probe when every measured pod used it, mixed when both, none without data."""
    seen = {s for s in sources if s}
    if not seen:
        return "none"
    if len(seen) == 1:
        return next(iter(seen))
    return "mixed"


def _condition(
    ctype: str, status: bool, reason: str, message: str, gen: int, now: str, previous: JSON
) -> Condition:
    value = "True" if status else "False"
    old = next((c for c in previous.get("conditions") or [] if c.get("type") == ctype), None)
    since = old.get("lastTransitionTime") if old and old.get("status") == value else None
    return Condition(
        type=ctype,
        status=value,
        reason=reason,
        message=message,
        observed_generation=gen,
        last_transition_time=since or now,
    )


def conditions(obs: Observation, previous: JSON) -> list[Condition]:
    """Ready and Degraded; the first blocking problem decides Ready, every problem
    shows in Degraded's message, the most important gives its reason. OpaqueLatency
    (True) while some measured pods are opaque, absent otherwise."""
    gen, now = obs.generation, obs.now_iso
    blocking = [p for p in obs.problems if p.reason in BLOCKING]
    if blocking:
        ready = _condition(
            READY, False, blocking[0].reason, blocking[0].message, gen, now, previous
        )
    else:
        msg = f"{obs.active} of {obs.total} pods serve through Service {obs.routed_service}"
        ready = _condition(READY, True, REASON_ROUTING, msg, gen, now, previous)
    if obs.problems:
        ordered = sorted(obs.problems, key=lambda p: (p.reason not in BLOCKING, p.reason))
        message = "; ".join(p.message for p in ordered)
        degraded = _condition(DEGRADED, True, ordered[0].reason, message, gen, now, previous)
    else:
        degraded = _condition(DEGRADED, False, REASON_AS_EXPECTED, "", gen, now, previous)
    out = [ready, degraded]
    if obs.opaque:
        measured = obs.measured
        if measured is None:
            measured = sum(1 for p in obs.pods if p.samples)
        message = opaque_message(obs.opaque, measured)
        out.append(
            _condition(
                OPAQUE_LATENCY, True, REASON_NO_RECOGNISED_FRAMING, message, gen, now, previous
            )
        )
    return out


def row_order(row: PodStatus) -> tuple[bool, str]:
    """The order of the status' pod rows: active pods first, then by name."""
    return (row.state != "active", row.name)


def build_status(obs: Observation, previous: JSON) -> AviatorPolicyStatus:
    """The status one evaluation reports; `previous` (the status the server holds)
    keeps each condition's lastTransitionTime while its status stays."""
    rows = sorted(obs.pods, key=row_order)[:MAX_POD_ROWS]
    ejected = obs.ejected
    if ejected is None:
        ejected = [r.name for r in obs.pods if r.state == "ejected"]
    return AviatorPolicyStatus(
        observed_generation=obs.generation,
        active_pods=obs.active,
        total_pods=obs.total,
        p99_latency_ms=None if obs.p99_ms is None else round(obs.p99_ms, 3),
        source=obs.source,
        service_name=obs.routed_service or None,
        conditions=conditions(obs, previous),
        pods=rows,
        ejected_pods=sorted(ejected),
        hand_offs=list(obs.hand_offs),
        zones=list(obs.zones),
        last_evaluation_time=obs.now_iso,
        takeover=None if obs.takeover is None else decode(TakeoverStatus, obs.takeover, "takeover"),
        engine_state=None if obs.engine_state is None else dict(obs.engine_state),
    )


def _close(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    fa, fb = float(a), float(b)
    if math.isclose(fa, fb, rel_tol=1e-9, abs_tol=1e-9):
        return True
    return abs(fa - fb) <= LATENCY_TOLERANCE * max(abs(fa), abs(fb))


_LATENCY_FIELDS = ("p50Ms", "p99Ms", "oldestOpenMs", "probeP50Ms", "probeP99Ms", "load")
_WINDOW_COUNT_FIELDS = ("samples", "responses", "keepWarmSamples", "probeSamples")


def _close_gauge(a: Any, b: Any) -> bool:
    """Requests in flight jitter from one report to the next; shown, not decided on. A
    change counts when it is large (more than half, and more than 2)."""
    if a is None or b is None:
        return a is b
    ia, ib = int(a), int(b)
    return abs(ia - ib) <= max(2, COUNT_TOLERANCE * max(ia, ib))


def _close_window_count(a: Any, b: Any, *, zero_matters: bool) -> bool:
    """Counts over the latency window move with the reports it holds; shown, not
    decided on. A change counts when one is more than WINDOW_COUNT_RATIO times the
    other (and they differ by more than 2), or when data appears or vanishes."""
    if a is None or b is None:
        return a is b
    ia, ib = int(a), int(b)
    if zero_matters and (ia == 0) != (ib == 0):
        return False
    return abs(ia - ib) <= 2 or max(ia, ib) <= WINDOW_COUNT_RATIO * min(ia, ib)


def _close_rate(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return abs(float(a) - float(b)) <= ERROR_RATE_TOLERANCE


def _same_rows(old: Sequence[JSON], new: Sequence[JSON]) -> bool:
    if len(old) != len(new):
        return False
    for a, b in zip(old, new, strict=True):
        for k in set(a) | set(b):
            if k in _LATENCY_FIELDS:
                if not _close(a.get(k), b.get(k)):
                    return False
            elif k == "errorRatePercent":
                if not _close_rate(a.get(k), b.get(k)):
                    return False
            elif k == "rif":
                if not _close_gauge(a.get(k), b.get(k)):
                    return False
            elif k in _WINDOW_COUNT_FIELDS:
                if not _close_window_count(a.get(k), b.get(k), zero_matters=k == "samples"):
                    return False
            elif a.get(k) != b.get(k):
                return False
    return True


def _strip_times(conds: Sequence[JSON]) -> list[JSON]:
    return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in conds]


def status_changed(old: JSON | None, new: JSON) -> bool:
    """Whether `new` says something `old` does not (see the module's write policy)."""
    if not old:
        return True
    for key in set(old) | set(new):
        if key == "lastEvaluationTime":
            continue
        a, b = old.get(key), new.get(key)
        if key == "p99LatencyMs":
            if not _close(a, b):
                return True
        elif key in ("pods", "zones"):
            if not _same_rows(a or [], b or []):
                return True
        elif key == "conditions":
            if _strip_times(a or []) != _strip_times(b or []):
                return True
        elif a != b:
            return True
    return False


def status_patch(
    previous: JSON, obs: Observation, *, exact: bool = True
) -> tuple[JSON, JSON] | None:
    """(the new status, the merge patch from `previous` to it), or None when
    `previous` already says what `obs` does (see the module's write policy).

    `exact`: `previous` is what the server holds (our own last write), so the patch
    carries only what changed; otherwise (the cache, which may lag behind a write whose
    answer was lost) every top-level field is sent whole."""
    new = build_status(obs, previous).to_dict()
    if not status_changed(previous, new):
        return None
    # Members the new status no longer has (a pod's breaker record in engineState, say)
    # go as null, or the server would keep them for ever.
    if exact:
        return new, mergepatch.between(previous, new)
    return new, mergepatch.replacing(previous, new)
