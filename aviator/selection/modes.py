"""Selection modes: which measured pods the policy wants serving.

The pool is the eligible pods that are measured and not held out by the circuit
breaker. Pods are ranked by p99 (ties by name, so results are deterministic). With
dampening on, incumbents (pods serving now) are ranked by p99 x (1 - thresholdPercent
/ 100): a challenger displaces an incumbent only when it is faster by that margin.

- topN: the N best, N = topN (default 3), at most the pool.
- percentage: the ceil(P % x eligible pods) best (P default 50), at least 1, at most
  the pool. The base counts every eligible pod, so ejected and unmeasured pods take
  part of the share but no slot.
- threshold: every pod with (ranked) p99 <= latencyThreshold; if none, the single best.
- prequal (hot-cold lexicographic): hot = load above the q-quantile (nearest rank) of
  the pool's loads; the cold pods are taken best first, up to topN if set, else up to
  the percentage share if set, else all of them. The quantile is a value of the pool,
  so the pods with the lowest load are always cold and "all hot" cannot occur.
  A pod's load (`load_of`) is its requests in flight (RIF), unless the policy names a
  load the pods report (`SelectionPolicy.load_combine`): `replace` reads the reported
  load alone (a pod that reported none: its RIF), `add` reads RIF + weight x the
  reported load (none reported: RIF alone).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aviator.selection.types import (
    DEFAULT_PERCENTAGE,
    DEFAULT_TOP_N,
    LatencyEstimate,
    LoadCombine,
    Mode,
    Reason,
    SelectionPolicy,
)

Pool = Sequence[tuple[str, LatencyEstimate]]


@dataclass(frozen=True, slots=True)
class ModeResult:
    chosen: frozenset[str]
    ranked: tuple[str, ...]  # the whole pool, best first (incumbent margin applied)
    size: int | None  # the set size the mode aims at, for sized selections
    reasons: Mapping[str, Reason]  # why each pool pod is chosen or not


def share(percentage: int, eligible: int) -> int:
    """ceil(percentage % of eligible), at least 1."""
    return max(1, -(-percentage * eligible // 100))


def select(
    pool: Pool,
    eligible: int,
    policy: SelectionPolicy,
    incumbents: frozenset[str],
    keep_factor: float,
) -> ModeResult:
    """Apply the policy's mode to the pool (pairs of pod name and known latency)."""

    scores = {
        name: lat.p99_ms * keep_factor if name in incumbents else lat.p99_ms for name, lat in pool
    }
    # Incumbents win exact ties so equal latencies never cause churn. (The keys are
    # built in one pass and compared in C: thousands of pods per evaluation.)
    order = sorted([(score, name not in incumbents, name) for name, score in scores.items()])
    ranked = tuple([name for _, _, name in order])

    mode = policy.mode
    if mode is Mode.TOP_N:
        return _sized(ranked, min(policy.top_n or DEFAULT_TOP_N, len(ranked)))
    if mode is Mode.PERCENTAGE:
        size = share(policy.percentage or DEFAULT_PERCENTAGE, eligible)
        return _sized(ranked, min(size, len(ranked)))
    if mode is Mode.THRESHOLD:
        return _threshold(ranked, scores, policy.latency_threshold_ms)
    return _prequal(ranked, dict(pool), eligible, policy)


def _sized(ranked: tuple[str, ...], size: int) -> ModeResult:
    reasons = {
        n: Reason.SELECTED if i < size else Reason.NOT_SELECTED for i, n in enumerate(ranked)
    }
    return ModeResult(frozenset(ranked[:size]), ranked, size, reasons)


def _threshold(ranked: tuple[str, ...], scores: Mapping[str, float], limit: float) -> ModeResult:
    within = [n for n in ranked if scores[n] <= limit]
    reasons = {n: Reason.OVER_THRESHOLD for n in ranked}
    if within:
        reasons.update(dict.fromkeys(within, Reason.SELECTED))
        return ModeResult(frozenset(within), ranked, None, reasons)
    if ranked:
        reasons[ranked[0]] = Reason.FASTEST_FALLBACK
        return ModeResult(frozenset(ranked[:1]), ranked, None, reasons)
    return ModeResult(frozenset(), ranked, None, reasons)


def load_of(lat: LatencyEstimate, combine: LoadCombine | None, weight: float = 1.0) -> float:
    """The load prequal splits hot from cold by (see the module docstring)."""
    if combine is None or lat.load is None:
        return float(lat.rif)
    if combine is LoadCombine.REPLACE:
        return lat.load
    return lat.rif + weight * lat.load


def hot_threshold(loads: Sequence[float], quantile: float) -> float:
    """The q-quantile of the loads by nearest rank; pods strictly above it are hot."""
    ordered = sorted(loads)
    # The epsilon keeps e.g. 0.84 x 25 = 21.000000000000004 at rank 21.
    rank = max(1, math.ceil(quantile * len(ordered) - 1e-9))
    return ordered[rank - 1]


def _prequal(
    ranked: tuple[str, ...],
    latency: Mapping[str, LatencyEstimate],
    eligible: int,
    policy: SelectionPolicy,
) -> ModeResult:
    if not ranked:
        return ModeResult(frozenset(), ranked, None, {})
    load = {n: load_of(latency[n], policy.load_combine, policy.load_weight) for n in ranked}
    limit = hot_threshold(list(load.values()), policy.rif_quantile)
    cold = [n for n in ranked if load[n] <= limit]
    budget: int | None = None
    if policy.top_n is not None:
        budget = policy.top_n
    elif policy.percentage is not None:
        budget = share(policy.percentage, eligible)
    chosen = cold if budget is None else cold[:budget]
    reasons = {n: Reason.HOT if load[n] > limit else Reason.NOT_SELECTED for n in ranked}
    reasons.update(dict.fromkeys(chosen, Reason.SELECTED))
    # No fixed size: how many pods are cold follows load noise, so every change of the
    # set (budget edits included) goes through dampening.
    return ModeResult(frozenset(chosen), ranked, None, reasons)
