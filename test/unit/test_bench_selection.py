"""Smoke test: the selection benchmark runs at its quick size and reports sane rows."""

from __future__ import annotations

import math

import pytest

from bench import selection_bench


@pytest.mark.bench
def test_selection_bench_quick_rows_are_well_formed() -> None:
    rows = selection_bench.run(quick=True)
    assert len(rows) >= 4
    for row in rows:
        assert row["benchmark"] == "selection"
        assert isinstance(row["metric"], str) and row["metric"]
        assert isinstance(row["unit"], str) and row["unit"]
        value = row["value"]
        assert isinstance(value, float) and math.isfinite(value) and value > 0
        if "ratio" in row:
            ratio = row["ratio"]
            assert isinstance(ratio, float) and math.isfinite(ratio) and ratio > 0
    throughput = [r for r in rows if r["unit"] == "1/s"]
    assert len(throughput) == 3
    scaling = [r for r in rows if "n log n" in str(r["metric"])]
    assert len(scaling) == 1 and "ratio" in scaling[0]
