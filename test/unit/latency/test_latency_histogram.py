"""Histogram layout and math: bucket bounds, quantile error, merge algebra."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.latency.histogram import (
    NUM_BUCKETS,
    CounterReset,
    Histogram,
    bucket_index,
    bucket_lower,
    bucket_mid,
    bucket_width,
    quantile_rank,
)

MAX_EXACT = (1 << 32) - 1  # largest value not saturating into the last bucket
values = st.integers(min_value=0, max_value=MAX_EXACT)
# Latencies people see: a few µs to a minute, so samples share buckets.
samples = st.lists(st.integers(min_value=0, max_value=60_000_000), min_size=1, max_size=300)
hists = st.lists(st.integers(min_value=0, max_value=10_000_000), max_size=60).map(
    Histogram.from_values
)
quantiles = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def test_known_indexes() -> None:
    assert [bucket_index(v) for v in (0, 1, 15, 16, 17, 31, 32, 33, 34)] == [
        0,
        1,
        15,
        16,
        17,
        31,
        32,
        32,
        33,
    ]
    assert bucket_index(1000) == (9 - 3) * 16 + ((1000 >> 5) & 15)
    assert bucket_index(MAX_EXACT) == NUM_BUCKETS - 1
    assert bucket_index(1 << 32) == NUM_BUCKETS - 1
    assert bucket_index(1 << 60) == NUM_BUCKETS - 1
    with pytest.raises(ValueError):
        bucket_index(-1)


def test_buckets_tile_the_range_without_gaps() -> None:
    assert bucket_lower(0) == 0
    for idx in range(NUM_BUCKETS - 1):
        assert bucket_lower(idx) + bucket_width(idx) == bucket_lower(idx + 1)
    last = NUM_BUCKETS - 1
    assert bucket_lower(last) + bucket_width(last) == 1 << 32
    for bad in (-1, NUM_BUCKETS):
        with pytest.raises(ValueError):
            bucket_lower(bad)


@given(values)
def test_value_lies_in_its_bucket(v: int) -> None:
    idx = bucket_index(v)
    assert bucket_lower(idx) <= v < bucket_lower(idx) + bucket_width(idx)


@given(values)
def test_midpoint_relative_error_at_most_one_32nd(v: int) -> None:
    mid = bucket_mid(bucket_index(v))
    assert abs(mid - v) <= v / 32  # 3.125 % <= 3.2 %; exact below 32 µs
    if v < 32:
        assert mid == v


@given(values, values)
def test_index_is_monotonic(a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    assert bucket_index(lo) <= bucket_index(hi)


@settings(max_examples=300)
@given(samples, quantiles)
def test_quantile_is_the_bucket_of_the_true_sample_quantile(xs: list[int], q: float) -> None:
    h = Histogram.from_values(xs)
    truth = sorted(xs)[quantile_rank(q, len(xs)) - 1]
    got = h.quantile(q)
    assert got == bucket_mid(bucket_index(truth))
    assert abs(got - truth) <= truth / 32


@settings(max_examples=200)
@given(samples, st.lists(quantiles, min_size=1, max_size=5))
def test_quantiles_in_one_pass_match_single_calls(xs: list[int], qs: list[float]) -> None:
    h = Histogram.from_values(xs)
    assert h.quantiles(qs) == [h.quantile(q) for q in qs]


def test_quantile_edges() -> None:
    assert Histogram().quantile(0.99) is None
    h = Histogram.from_values(range(1, 101))
    assert h.quantile(0.0) == 1
    assert h.quantile(0.07) == 7  # not 8: float noise in 0.07 * 100 is rounded away
    assert h.quantile(1.0) == bucket_mid(bucket_index(100))
    for bad in (-0.1, 1.1, float("nan")):
        with pytest.raises(ValueError):
            h.quantile(bad)


@settings(max_examples=300)
@given(hists, hists, hists)
def test_merge_is_associative(a: Histogram, b: Histogram, c: Histogram) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@settings(max_examples=300)
@given(hists, hists)
def test_merge_is_commutative_and_pure(a: Histogram, b: Histogram) -> None:
    a_before, b_before = a.copy(), b.copy()
    ab = a.merge(b)
    assert ab == b.merge(a)
    assert ab.count == a.count + b.count
    assert (a, b) == (a_before, b_before)


@settings(max_examples=300)
@given(hists, hists)
def test_delta_undoes_merge(a: Histogram, b: Histogram) -> None:
    d = a.merge(b).delta(a)
    assert d == b
    assert d.count == b.count
    assert a.merge(b) - a == b


@given(hists, st.integers(min_value=0, max_value=10_000_000))
def test_delta_refuses_counters_that_went_backwards(a: Histogram, v: int) -> None:
    bigger = a.copy()
    bigger.record(v)
    with pytest.raises(CounterReset):
        a.delta(bigger)


@given(st.lists(hists, max_size=8))
def test_merge_all_equals_chained_merge(hs: list[Histogram]) -> None:
    chained = Histogram()
    for h in hs:
        chained = chained.merge(h)
    assert Histogram.merge_all(hs) == chained


@given(hists)
def test_sparse_and_dense_round_trips(h: Histogram) -> None:
    sparse = h.to_sparse()
    assert all(isinstance(k, str) and v > 0 for k, v in sparse.items())
    assert Histogram.from_sparse(sparse) == h
    assert Histogram(h.counts) == h
    assert len(h.counts) == NUM_BUCKETS
    assert sum(h.counts) == h.count


@pytest.mark.parametrize(
    "bad",
    [
        {"x": 1},
        {"464": 1},
        {"-1": 1},
        {"3": -1},
        {"3": 1.5},
        {"3": "1"},
        {"3": True},
    ],
)
def test_from_sparse_refuses_garbage(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Histogram.from_sparse(bad)  # type: ignore[arg-type]


def test_record_with_weight_and_validation() -> None:
    h = Histogram()
    h.record(1000, 5)
    h.record(1000, 0)
    assert h.count == 5 and len(h) == 1
    assert list(h.items()) == [(bucket_index(1000), 5)]
    with pytest.raises(ValueError):
        h.record(10, -1)
    with pytest.raises(ValueError):
        Histogram([0, -1])
    assert Histogram([0, 0, 3]).quantile(0.5) == 2


@settings(max_examples=200)
@given(hists, hists)
def test_subtract_in_place_undoes_update(a: Histogram, b: Histogram) -> None:
    total = a.merge(b)
    total.subtract(b)
    assert total == a and total.count == a.count
    if b:
        target = a.merge(b)
        before = target.copy()
        with pytest.raises(CounterReset):
            target.subtract(target.merge(b))
        assert target == before  # a refused subtraction changes nothing
