"""Prequal's hot/cold split on the load pods report (queue depth, KV-cache use)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aviator.selection import LatencyEstimate, LoadCombine, Mode, Reason, SelectionPolicy
from aviator.selection.modes import hot_threshold, load_of, select

loads = st.none() | st.floats(min_value=0, max_value=1e6, allow_nan=False)
combines = st.sampled_from([None, LoadCombine.REPLACE, LoadCombine.ADD])


def est(p99: float, rif: int = 0, load: float | None = None) -> LatencyEstimate:
    return LatencyEstimate(p99 / 2, p99, rif=rif, load=load)


pools = st.lists(
    st.tuples(
        st.floats(min_value=0.1, max_value=1e4, allow_nan=False),
        st.integers(min_value=0, max_value=1000),
        loads,
    ),
    min_size=1,
    max_size=12,
).map(lambda rows: [(f"p{i}", est(p99, rif, load)) for i, (p99, rif, load) in enumerate(rows)])


def prequal(
    combine: LoadCombine | None, quantile: float = 0.75, weight: float = 1.0
) -> SelectionPolicy:
    return SelectionPolicy(
        mode=Mode.PREQUAL, rif_quantile=quantile, load_combine=combine, load_weight=weight
    )


def test_load_of_each_combination() -> None:
    lat = est(10, rif=3, load=5.0)
    assert load_of(lat, None) == 3
    assert load_of(lat, LoadCombine.REPLACE) == 5.0
    assert load_of(lat, LoadCombine.ADD, 2.0) == 13.0
    unread = est(10, rif=3)
    assert load_of(unread, LoadCombine.REPLACE) == 3  # no report: its RIF stands in
    assert load_of(unread, LoadCombine.ADD, 2.0) == 3


def test_hot_threshold_takes_fractional_loads() -> None:
    assert hot_threshold([0.5, 0.25, 0.9, 0.1], 0.75) == 0.5


def test_the_queued_pod_is_hot_though_its_rif_is_not() -> None:
    # Four pods; the small one's queue is long while every RIF looks alike (e.g. a
    # server that accepts and queues inside): only the reported load tells them apart.
    pool = [(f"big{i}", est(20, rif=4, load=0.0)) for i in range(3)]
    pool.append(("small", est(15, rif=4, load=12.0)))
    by_rif = select(pool, 4, prequal(None), frozenset(), 1.0)
    assert "small" in by_rif.chosen
    by_load = select(pool, 4, prequal(LoadCombine.REPLACE), frozenset(), 1.0)
    assert by_load.chosen == {"big0", "big1", "big2"}
    assert by_load.reasons["small"] is Reason.HOT
    added = select(pool, 4, prequal(LoadCombine.ADD), frozenset(), 1.0)
    assert added.reasons["small"] is Reason.HOT


@given(pools, combines, st.floats(min_value=0.05, max_value=1.0))
def test_cold_pods_never_carry_more_load_than_hot_ones(
    pool: list[tuple[str, LatencyEstimate]], combine: LoadCombine | None, q: float
) -> None:
    result = select(pool, len(pool), prequal(combine, q), frozenset(), 1.0)
    load = {n: load_of(lat, combine) for n, lat in pool}
    hot = {n for n, r in result.reasons.items() if r is Reason.HOT}
    assert result.chosen and result.chosen.isdisjoint(hot)
    assert all(load[h] > load[c] for h in hot for c in result.chosen)
    # The least loaded pod is always cold (the quantile is a value of the pool).
    assert min(load.values()) <= min((load[h] for h in hot), default=float("inf"))
    assert any(load[n] == min(load.values()) for n in set(load) - hot)


@given(pools, st.floats(min_value=0.05, max_value=1.0))
def test_without_a_load_spec_reports_change_nothing(
    pool: list[tuple[str, LatencyEstimate]], q: float
) -> None:
    stripped = [(n, est(lat.p99_ms, lat.rif)) for n, lat in pool]
    a = select(pool, len(pool), prequal(None, q), frozenset(), 1.0)
    b = select(stripped, len(pool), prequal(None, q), frozenset(), 1.0)
    assert a == b


@given(pools, st.floats(min_value=0.05, max_value=1.0))
def test_replace_ignores_rif_where_a_load_is_reported(
    pool: list[tuple[str, LatencyEstimate]], q: float
) -> None:
    reported = [(n, est(lat.p99_ms, lat.rif, lat.load or 0.0)) for n, lat in pool]
    shuffled = [(n, est(lat.p99_ms, 999 - lat.rif, lat.load)) for n, lat in reported]
    a = select(reported, len(pool), prequal(LoadCombine.REPLACE, q), frozenset(), 1.0)
    b = select(shuffled, len(pool), prequal(LoadCombine.REPLACE, q), frozenset(), 1.0)
    assert a.chosen == b.chosen


def test_load_weight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="load_weight"):
        prequal(LoadCombine.ADD, weight=0.0)
