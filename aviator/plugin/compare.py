"""`kubectl aviator compare`: is a canary's latency within a margin of the stable pods'?

The decision is pure (`compare`); the command (`cmd.py`) only reads the policy that
measures the Service and the names of the pods the canary selector matches. The
inputs are the per-pod rows of the policy's status (`status.pods`: p99, samples,
responses and error rate over the controller's window, as of its last evaluation).

How the groups are summed up:
- a group's p99 is the sample-weighted mean of its measured pods' p99s: the status
  carries per-pod quantiles, not histograms, so the exact p99 of the merged traffic
  cannot be had from it (it lies between the group's fastest and slowest pod p99, both
  reported). The Prometheus queries of docs/canary.md compute the merged quantile
  from the agents' histograms instead;
- a group's error rate is exact: errors over responses whose status was read, summed
  over its pods (unknown for pods whose protocol carries no status, e.g. opaque).

The verdict, in order:
- NO_DATA (exit 2) when either group has no measured pod or fewer than `min_samples`
  requests in all: no verdict can be given either way;
- FAIL (exit 1) when a canary pod is ejected by the circuit breaker, when the canary
  p99 exceeds the stable p99 by more than `within_percent` % of it, or when the canary
  error rate exceeds the stable one by more than `max_error_increase` percentage points
  (compared only when both groups have at least `min_samples` responses with a status);
- PASS (exit 0) otherwise.

The controller rewrites a pod's p99 in the status only when it moves by more than
`LATENCY_TOLERANCE` (10 %), its error rate by more than 1 point: the figures compared
are within that of the controller's current ones, and a note says so when the margin
asked for is finer.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from aviator.api.status import PodStatus
from aviator.reconcilers.status import LATENCY_TOLERANCE

DEFAULT_WITHIN_PERCENT = 10.0
DEFAULT_MAX_ERROR_INCREASE = 1.0
DEFAULT_MIN_SAMPLES = 100


class Outcome(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    NO_DATA = "noData"

    @property
    def exit_code(self) -> int:
        return {Outcome.PASS: 0, Outcome.FAIL: 1, Outcome.NO_DATA: 2}[self]


@dataclass(frozen=True)
class Group:
    """One side of the comparison, summed up from its pods' rows."""

    pods: tuple[str, ...]
    measured: int  # pods with a p99 and at least one sample
    samples: int
    p99_ms: float | None  # sample-weighted mean of the measured pods' p99s
    fastest_p99_ms: float | None
    slowest_p99_ms: float | None
    responses: int  # responses whose status was read
    errors: float
    ejected: tuple[tuple[str, str], ...]  # (pod, reason) of pods the breaker ejected

    @property
    def error_rate_percent(self) -> float | None:
        return 100.0 * self.errors / self.responses if self.responses else None

    def to_json(self) -> dict[str, Any]:
        return {
            "pods": list(self.pods),
            "measuredPods": self.measured,
            "samples": self.samples,
            "p99Ms": self.p99_ms,
            "fastestP99Ms": self.fastest_p99_ms,
            "slowestP99Ms": self.slowest_p99_ms,
            "responses": self.responses,
            "errorRatePercent": self.error_rate_percent,
            "ejectedPods": [{"pod": p, "reason": r} for p, r in self.ejected],
        }


def summarize(rows: Sequence[PodStatus]) -> Group:
    measured = [r for r in rows if r.p99_ms is not None and r.samples > 0]
    samples = sum(r.samples for r in measured)
    p99s = [r.p99_ms for r in measured if r.p99_ms is not None]
    weighted = sum(r.samples * r.p99_ms for r in measured if r.p99_ms is not None)
    with_status = [r for r in rows if r.responses and r.error_rate_percent is not None]
    return Group(
        pods=tuple(sorted(r.name for r in rows)),
        measured=len(measured),
        samples=samples,
        p99_ms=weighted / samples if samples else None,
        fastest_p99_ms=min(p99s) if p99s else None,
        slowest_p99_ms=max(p99s) if p99s else None,
        responses=sum(r.responses or 0 for r in with_status),
        errors=sum((r.responses or 0) * (r.error_rate_percent or 0.0) / 100.0 for r in with_status),
        ejected=tuple(
            sorted((r.name, r.reason or "ejected") for r in rows if r.state == "ejected")
        ),
    )


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    canary: Group
    stable: Group
    within_percent: float
    max_error_increase: float
    min_samples: int
    reasons: tuple[str, ...]  # why it failed or gave no verdict (empty on a pass)
    notes: tuple[str, ...] = field(default=())  # what was not compared, and why

    @property
    def p99_increase_percent(self) -> float | None:
        c, s = self.canary.p99_ms, self.stable.p99_ms
        if c is None or s is None or s <= 0:
            return None
        return 100.0 * (c - s) / s

    @property
    def error_rate_increase(self) -> float | None:
        c, s = self.canary.error_rate_percent, self.stable.error_rate_percent
        return None if c is None or s is None else c - s

    def line(self) -> str:
        """The verdict line: what was decided and the figures behind it."""
        head = {Outcome.PASS: "PASS", Outcome.FAIL: "FAIL", Outcome.NO_DATA: "NO DATA"}
        if self.reasons:
            return f"{head[self.outcome]}: {'; '.join(self.reasons)}"
        c, s = self.canary, self.stable
        text = (
            f"PASS: canary p99 {_ms(c.p99_ms)} is within {self.within_percent:g}% of "
            f"stable p99 {_ms(s.p99_ms)} ({_signed(self.p99_increase_percent)}%)"
        )
        if self.error_rate_increase is not None:
            text += (
                f"; error rate {_pct(c.error_rate_percent)} vs {_pct(s.error_rate_percent)} "
                f"(allowed +{self.max_error_increase:g} points)"
            )
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": str(self.outcome),
            "exitCode": self.outcome.exit_code,
            "withinPercent": self.within_percent,
            "maxErrorIncreasePoints": self.max_error_increase,
            "minSamples": self.min_samples,
            "p99IncreasePercent": self.p99_increase_percent,
            "errorRateIncreasePoints": self.error_rate_increase,
            "reasons": list(self.reasons),
            "notes": list(self.notes),
            "canary": self.canary.to_json(),
            "stable": self.stable.to_json(),
        }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


def compare(
    canary_rows: Sequence[PodStatus],
    stable_rows: Sequence[PodStatus],
    *,
    within_percent: float = DEFAULT_WITHIN_PERCENT,
    max_error_increase: float = DEFAULT_MAX_ERROR_INCREASE,
    min_samples: int = DEFAULT_MIN_SAMPLES,
) -> Verdict:
    """The verdict on the canary's pods against the stable ones (see the module doc)."""
    if within_percent < 0 or max_error_increase < 0 or min_samples < 1:
        raise ValueError("margins must be >= 0 and min_samples >= 1")
    canary, stable = summarize(canary_rows), summarize(stable_rows)

    def verdict(outcome: Outcome, reasons: list[str], notes: list[str]) -> Verdict:
        return Verdict(
            outcome,
            canary,
            stable,
            within_percent,
            max_error_increase,
            min_samples,
            tuple(reasons),
            tuple(notes),
        )

    missing = []
    for name, group in (("canary", canary), ("stable", stable)):
        if not group.pods:
            missing.append(f"no {name} pods among the Service's pods")
        elif group.samples < min_samples:
            missing.append(
                f"{name} pods have {group.samples} samples in the window "
                f"({group.measured} of {len(group.pods)} pods measured; need {min_samples})"
            )
    if missing:
        return verdict(Outcome.NO_DATA, missing, [])

    failed, notes = [], []
    if within_percent < 100 * LATENCY_TOLERANCE:
        notes.append(
            f"the status's p99s are rewritten when they move by more than "
            f"{100 * LATENCY_TOLERANCE:g}%, so a margin of {within_percent:g}% is finer "
            "than the figures (the Prometheus queries of docs/canary.md are not)"
        )
    for pod, reason in canary.ejected:
        failed.append(f"canary pod {pod} is ejected by the circuit breaker ({reason})")
    assert canary.p99_ms is not None and stable.p99_ms is not None  # samples > 0
    if canary.p99_ms > stable.p99_ms * (1 + within_percent / 100):
        failed.append(
            f"canary p99 {_ms(canary.p99_ms)} is {_above(canary.p99_ms, stable.p99_ms)} "
            f"stable p99 {_ms(stable.p99_ms)} (allowed: {within_percent:g}%)"
        )
    if canary.responses < min_samples or stable.responses < min_samples:
        notes.append(
            f"error rate not compared: responses with a status: canary {canary.responses}, "
            f"stable {stable.responses} (need {min_samples} each)"
        )
    else:
        c_err, s_err = canary.error_rate_percent, stable.error_rate_percent
        assert c_err is not None and s_err is not None
        if c_err > s_err + max_error_increase:
            failed.append(
                f"canary error rate {_pct(c_err)} exceeds stable {_pct(s_err)} by "
                f"{c_err - s_err:.2f} points (allowed +{max_error_increase:g})"
            )
    return verdict(Outcome.FAIL if failed else Outcome.PASS, failed, notes)


def _above(value: float, base: float) -> str:
    return f"{100.0 * (value - base) / base:.1f}% above" if base > 0 else "above"


def split_rows(
    rows: Sequence[PodStatus], canary_pods: Collection[str]
) -> tuple[list[PodStatus], list[PodStatus]]:
    """The status rows of the canary's pods, and those of the Service's other pods."""
    return [r for r in rows if r.name in canary_pods], [
        r for r in rows if r.name not in canary_pods
    ]


GROUP_HEADERS = [
    "group",
    "pods",
    "measured",
    "samples",
    "p99ms",
    "fastest",
    "slowest",
    "errors%",
    "ejected",
]


def group_rows(verdict: Verdict) -> list[list[object]]:
    """The two groups side by side (the table above the verdict line)."""
    return [
        [
            name,
            len(g.pods),
            g.measured,
            g.samples,
            g.p99_ms,
            g.fastest_p99_ms,
            g.slowest_p99_ms,
            g.error_rate_percent,
            len(g.ejected),
        ]
        for name, g in (("canary", verdict.canary), ("stable", verdict.stable))
    ]
