"""Smoke test of the workqueue benchmark at its quick size."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

# `python -m pytest` (make test) has the repository root on sys.path; a bare `pytest` not.
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
workqueue_bench = importlib.import_module("bench.workqueue_bench")


@pytest.mark.bench
def test_workqueue_bench_quick_rows() -> None:
    rows = workqueue_bench.run(quick=True)
    assert {row["metric"] for row in rows} >= {
        "add/get/done, 1 worker",
        "add/get/done, 4 workers",
        "controller harness, 4 workers, no-op reconcile",
        "add_rate_limited, default limiter",
    }
    for row in rows:
        assert row["benchmark"] == "workqueue"
        value = row["value"]
        assert isinstance(value, float) and value > 0
        assert row["unit"] in {"items/s", "adds/s"}
