"""Smoke test: the in-process reconcile benchmark runs at its quick size and what it
remembers makes a steady reconcile cheaper than reading everything afresh."""

from __future__ import annotations

import math

import pytest

from bench import reconcile_bench


@pytest.mark.bench
def test_reconcile_bench_quick_rows_are_well_formed() -> None:
    rows = reconcile_bench.run(quick=True)
    assert len(rows) == 2
    for row in rows:
        assert row["benchmark"] == "reconcile" and row["unit"] == "ms"
        value = row["value"]
        assert isinstance(value, float) and math.isfinite(value) and value > 0
        assert "nothing remembered" in str(row["note"])
