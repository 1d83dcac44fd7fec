"""Exported Prometheus buckets: exact folds of the log-linear histogram, and a
histogram_quantile over them (Prometheus' own interpolation, aviator/testing/
promquantile.py, itself checked against promtool in test_monitoring_rules.py) within
the stated bound of the agent's quantile."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from aviator.agent.promfold import (
    DEFAULT_PER_OCTAVE,
    MIN_EXP,
    PER_OCTAVE_CHOICES,
    TOP_EXP,
    BucketLayout,
    error_bound,
    series_per_endpoint,
)
from aviator.latency.histogram import Histogram, quantile_rank
from aviator.testing.promquantile import histogram_quantile as prometheus_quantile


def histogram_quantile(q: float, buckets: list[tuple[str, float]]) -> float:
    return prometheus_quantile(q, buckets, scale=10**6)  # in µs, as the agent's


# Log-uniform-ish latencies from 0 to 2^27 µs (beyond the exported range both ways).
values_us = st.integers(0, 27).flatmap(lambda e: st.integers(0, 1 << e))
distributions = st.lists(st.tuples(values_us, st.integers(1, 2000)), min_size=1, max_size=40)


@given(distributions, st.sampled_from(PER_OCTAVE_CHOICES), st.sampled_from([0.5, 0.9, 0.99]))
def test_histogram_quantile_is_within_the_bound_of_the_agents(
    samples: list[tuple[int, int]], per_octave: int, q: float
) -> None:
    hist = Histogram()
    for v, n in samples:
        hist.record(v, n)
    agent = hist.quantile(q)
    assert agent is not None
    # The bound holds inside the exported range; and where float noise makes q * n
    # overshoot an integer, Prometheus ranks one sample higher than the agent does.
    assume((1 << MIN_EXP) <= agent < (1 << TOP_EXP))
    assume(math.ceil(q * hist.count) == quantile_rank(q, hist.count))
    estimate = histogram_quantile(q, BucketLayout(per_octave).fold(hist))
    assert abs(estimate - agent) <= error_bound(per_octave) * agent


@pytest.mark.parametrize("per_octave", PER_OCTAVE_CHOICES)
def test_the_bound_is_nearly_reached(per_octave: int) -> None:
    # All samples in the lowest sub-bucket of an exported bucket: the agent says its
    # midpoint, Prometheus interpolates q of the way up the whole exported bucket.
    hist = Histogram.from_values([1 << 20] * 1000)
    agent = hist.quantile(0.99)
    assert agent is not None
    estimate = histogram_quantile(0.99, BucketLayout(per_octave).fold(hist))
    assert 0.9 * error_bound(per_octave) < abs(estimate - agent) / agent <= error_bound(per_octave)


@given(st.lists(values_us, max_size=200), st.sampled_from(PER_OCTAVE_CHOICES))
def test_exported_counts_are_exact_folds(values: list[int], per_octave: int) -> None:
    layout = BucketLayout(per_octave)
    folded = layout.fold(Histogram.from_values(values))
    assert folded[-1] == ("+Inf", float(len(values)))
    for (label, cumulative), le_us in zip(folded, layout.le_us, strict=False):
        assert Decimal(label) * 10**6 == Decimal(str(le_us))
        # Every sample counted under each bound at or above its value, none other.
        assert cumulative == sum(1 for v in values if v <= le_us)


def test_layout_and_its_cost() -> None:
    layout = BucketLayout()
    assert layout.per_octave == DEFAULT_PER_OCTAVE == 16
    assert error_bound(DEFAULT_PER_OCTAVE) == 1 / 32
    assert layout.labels[:2] == ["0.0000635", "0.0000675"]  # below 64 µs; [64, 68) µs
    assert layout.labels[-1] == "16.7772155"  # 2^24 µs - ½
    assert layout.le_us == sorted(set(layout.le_us))
    assert {b: series_per_endpoint(b) for b in PER_OCTAVE_CHOICES} == {
        1: 22,
        2: 40,
        4: 76,
        8: 148,
        16: 292,
    }
    with pytest.raises(ValueError):
        BucketLayout(3)
