"""What `kubectl aviator` prints, from the objects the API server holds (pure).

Everything is read through the API's own codec (`aviator.api.codec.decode` into
`AviatorPolicyStatus`) and the engine's own state parser
(`aviator.selection.state.EngineState`), so the plugin shows what the controller
wrote, not a second reading of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aviator.api.codec import PolicyError, decode
from aviator.api.status import AviatorPolicyStatus, Condition, PodStatus
from aviator.api.types import AviatorPolicySpec
from aviator.kube.objects import JSON
from aviator.reconcilers.mapping import routed_service, target_name
from aviator.selection.state import BreakerRecord, BreakerStatus, EngineState

READY = "Ready"
DEGRADED = "Degraded"
NONE = "-"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Columns aligned the way kubectl aligns them (three spaces apart)."""
    cells = [[str(h).upper() for h in headers], *([_cell(v) for v in r] for r in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def _cell(value: object) -> str:
    if value is None or value == "":
        return NONE
    if isinstance(value, float):
        return f"{value:.1f}" if value < 100 else f"{value:.0f}"
    return str(value)


def status_of(policy: JSON) -> AviatorPolicyStatus:
    """The policy's status as the API types it (an empty status before the first write)."""
    return decode(AviatorPolicyStatus, policy.get("status") or {}, "status")  # type: ignore[no-any-return]


def condition(status: AviatorPolicyStatus, ctype: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == ctype), None)


def age(timestamp: str | None, now: datetime) -> str:
    """kubectl's short age: 45s, 12m, 5h, 3d."""
    if not timestamp:
        return NONE
    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return NONE
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _cond_text(c: Condition | None) -> str:
    if c is None:
        return NONE
    return c.status if not c.reason else f"{c.status} ({c.reason})"


def status_rows(policies: Sequence[JSON], now: datetime | None = None) -> list[list[object]]:
    """One row per policy: what `kubectl get avp` shows, plus the conditions."""
    now = now or datetime.now(UTC)
    rows: list[list[object]] = []
    for p in sorted(policies, key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"])):
        meta = p["metadata"]
        st = status_of(p)
        mode, _ = _routing(p)
        stale = st.observed_generation is not None and st.observed_generation != meta.get(
            "generation"
        )
        ready = _cond_text(condition(st, READY)) + (" (stale)" if stale else "")
        rows.append(
            [
                meta["namespace"],
                meta["name"],
                target_name(p),
                f"{routed_service(p)} ({mode})",
                st.active_pods,
                st.total_pods,
                st.p99_latency_ms,
                st.source,
                ready,
                _cond_text(condition(st, DEGRADED)),
                age(meta.get("creationTimestamp"), now),
            ]
        )
    return rows


STATUS_HEADERS = [
    "namespace",
    "name",
    "target",
    "routes",
    "active",
    "total",
    "p99ms",
    "source",
    "ready",
    "degraded",
    "age",
]


def conditions_text(policy: JSON) -> str:
    """Every condition's message, one per line (below the status table)."""
    st = status_of(policy)
    name = f"{policy['metadata']['namespace']}/{policy['metadata']['name']}"
    return "\n".join(
        f"{name} {c.type}={c.status} {c.reason}: {c.message}" for c in st.conditions if c.message
    )


def _routing(policy: JSON) -> tuple[str, str | None]:
    routing = (policy.get("spec") or {}).get("routing") or {}
    return str(routing.get("mode") or "shadow"), routing.get("serviceName")


# -- explain ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """The spec's decision rule, in words (what put a pod in or left it out)."""

    selection: str
    breaker: str | None
    dampening: str | None


def rule_of(policy: JSON) -> Rule:
    try:
        spec = AviatorPolicySpec.from_dict(policy.get("spec"))
    except (PolicyError, ValueError, TypeError):
        return Rule("spec not readable (InvalidSpec)", None, None)
    sel = spec.selection
    mode = sel.mode
    if mode == "topN":
        text = f"topN: the {sel.top_n} fastest"
    elif mode == "percentage":
        text = f"percentage: the fastest {sel.percentage}%"
    elif mode == "threshold":
        text = f"threshold: p99 <= {spec.latency_threshold}"
    else:
        load = sel.prequal.load
        what = (
            "RIF"
            if load is None
            else f"{load.metric}"
            if load.combine == "replace"
            else f"RIF + {load.weight:g} x {load.metric}"
        )
        text = (
            f"prequal: not hot ({what} quantile {sel.prequal.rif_quantile}), "
            f"then fastest {sel.percentage}%"
        )
    cb = spec.circuit_breaker
    breaker = (
        f"eject after {cb.consecutive_violations} x p99 > {cb.p99_threshold}, "
        f"retry after {cb.recovery_interval}"
        if cb.enabled
        else None
    )
    d = spec.dampening
    damp = (
        f"a new set must be {d.threshold_percent}% faster and win "
        f"{d.consecutive_intervals} evaluations in a row"
        if d.enabled
        else None
    )
    return Rule(f"{text}, at least {spec.min_endpoints}", breaker, damp)


def engine_state_of(status: AviatorPolicyStatus) -> EngineState:
    try:
        return EngineState.from_dict(status.engine_state or {})
    except (ValueError, TypeError):
        return EngineState()


def _breaker_text(record: BreakerRecord | None, needed: int | None) -> str:
    if record is None:
        return "closed"
    if record.status is BreakerStatus.CLOSED:
        if record.violations and needed:
            return f"closed ({record.violations}/{needed} violations)"
        return "closed"
    if record.status is BreakerStatus.OPEN:
        return f"open (ejection {max(1, record.level)} in a row)"
    return "halfOpen (on trial)"


def _consecutive(policy: JSON) -> int | None:
    cb = ((policy.get("spec") or {}).get("circuitBreaker")) or {}
    return int(cb["consecutiveViolations"]) if cb.get("consecutiveViolations") else None


def _why(row: PodStatus, rule: Rule, breaker: str) -> str:
    if row.reason:
        return row.reason
    if row.state == "active":
        return f"chosen by {rule.selection.split(':')[0]}"
    if row.state == "standby":
        return f"not chosen by {rule.selection.split(':')[0]}"
    if row.state == "ejected":
        return f"circuit breaker {breaker}"
    if row.state == "unknown":
        return "no latency data yet: kept serving so it gets measured"
    return NONE


def explain_rows(policy: JSON, pods: Sequence[JSON]) -> list[list[object]]:
    """Every pod of the policy: in or out, and why (latency, breaker, dampening, rule).

    `pods`: the namespace's Pod objects (their uids key the engine's memory)."""
    st = status_of(policy)
    rule = rule_of(policy)
    state = engine_state_of(st)
    uid_of = {str(p["metadata"]["name"]): str(p["metadata"].get("uid", "")) for p in pods}
    needed = _consecutive(policy)
    pending = state.dampening.candidate
    rows: list[list[object]] = []
    for row in st.pods:
        key = row.name if state.by_name else uid_of.get(row.name, "")
        breaker = _breaker_text(state.breaker.get(key), needed)
        routed = row.state in ("active", "unknown")
        damp = NONE
        if rule.dampening is not None and pending:
            damp = (
                f"in the pending set ({state.dampening.streak} win(s))"
                if key in pending
                else "not in the pending set"
            )
        rows.append(
            [
                row.name,
                row.node,
                "in" if routed else "out",
                row.state,
                row.p50_ms,
                row.p99_ms,
                row.rif,
                row.samples,
                breaker if rule.breaker is not None else "off",
                damp,
                _why(row, rule, breaker),
            ]
        )
    return rows


EXPLAIN_HEADERS = [
    "pod",
    "node",
    "routed",
    "state",
    "p50ms",
    "p99ms",
    "rif",
    "samples",
    "breaker",
    "dampening",
    "why",
]


def explain_header(policy: JSON) -> str:
    """The lines above the explain table: the rule, the routing, the conditions."""
    st = status_of(policy)
    rule = rule_of(policy)
    mode, _ = _routing(policy)
    lines = [
        f"Policy {policy['metadata']['namespace']}/{policy['metadata']['name']}: "
        f"{target_name(policy)} -> {routed_service(policy)} ({mode}), "
        f"{st.active_pods}/{st.total_pods} pods serving, source {st.source}",
        f"  selection: {rule.selection}",
        f"  circuit breaker: {rule.breaker or 'off'}",
        f"  dampening: {rule.dampening or 'off'}",
    ]
    if st.zones:
        spilling = [z.zone for z in st.zones if z.state != "local"]
        lines.append(
            f"  topology: latencyAware, {len(st.zones)} zones, "
            + (f"spilling: {', '.join(spilling)}" if spilling else "every zone local")
        )
    for h in st.hand_offs:
        lines.append(f"  handing off: {h.pod} on {h.node or NONE} ({h.ip}) until {h.until}")
    engine = engine_state_of(st)
    if engine.overload:
        lines.append("  overload: most pods look slow, so nothing is ejected")
    for c in st.conditions:
        lines.append(f"  {c.type}={c.status} {c.reason}{': ' + c.message if c.message else ''}")
    return "\n".join(lines)


ZONE_HEADERS = ["zone", "state", "reason", "streak", "pods", "p99(ms)"]


def zone_rows(policy: JSON) -> list[list[object]]:
    """status.zones (topology.mode latencyAware): each zone's state and why."""
    return [
        [z.zone, z.state, z.reason, z.streak, z.pods, z.p99_ms] for z in status_of(policy).zones
    ]


# -- latency ---------------------------------------------------------------------------


def policies_for_service(policies: Sequence[JSON], service: str) -> list[JSON]:
    """The policies that target `service` or route through it (oldest first)."""
    found = [p for p in policies if service in (target_name(p), routed_service(p))]
    return sorted(found, key=lambda p: str(p["metadata"].get("creationTimestamp", "")))


def latency_rows(policy: JSON, now: datetime | None = None) -> list[list[object]]:
    """Per pod: p50, p99, requests in flight, samples (keep-warm among them), the
    kubelet's probes apart (how many, their p50), protocol and source, as of the
    policy's last evaluation worth recording."""
    st = status_of(policy)
    raw_rows: Mapping[str, Any] = {
        str(r.get("name")): r for r in (policy.get("status") or {}).get("pods") or []
    }
    when = age(st.last_evaluation_time, now or datetime.now(UTC))
    return [
        [
            r.name,
            r.ip,
            r.node,
            r.state,
            r.p50_ms,
            r.p99_ms,
            r.rif,
            r.load,
            r.samples,
            r.keep_warm_samples,
            r.probe_samples,
            r.probe_p50_ms,
            # The protocol a pod speaks, when the controller reports it per pod.
            raw_rows.get(r.name, {}).get("protocol"),
            st.source,
            when,
        ]
        for r in st.pods
    ]


LATENCY_HEADERS = [
    "pod",
    "ip",
    "node",
    "state",
    "p50ms",
    "p99ms",
    "rif",
    "load",
    "samples",
    "keepwarm",
    "probes",
    "probe p50ms",
    "protocol",
    "source",
    "as of",
]
