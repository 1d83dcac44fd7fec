"""Smoke test of the informer benchmark at its quick size (starts its own control plane)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

# `python -m pytest` (make test) has the repository root on sys.path; a bare `pytest` not.
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
informer_bench = importlib.import_module("bench.informer_bench")


@pytest.mark.bench
@pytest.mark.integration
def test_informer_bench_quick_rows() -> None:
    rows = informer_bench.run(quick=True)
    metrics = {str(row["metric"]) for row in rows}
    assert {
        "initial sync, list into cache",
        "initial sync, handler saw all",
        "steady-state events delivered",
    } <= metrics
    assert sum(m.startswith("ingest per core") for m in metrics) == 4
    assert "ingest per core (decode the controller's Pod fields → cache → handler)" in metrics
    for row in rows:
        assert row["benchmark"] == "informer"
        value = row["value"]
        assert isinstance(value, float) and value > 0
        assert row["unit"] in {"s", "events/s", "updates/s"}
    ingest = [r for r in rows if str(r["metric"]).startswith("ingest")]
    assert all(isinstance(r["ratio"], float) for r in ingest)
