"""The churn soak at its bounded size (1,000 pods, 250 at a time; `make bench` runs
10,000): the real agent with its BPF program and the real controller, pods through a
real control plane, traffic in a network namespace of the benchmark's own. Every pod
is measured and the agent's map ends where it started."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import require_bpf_privileges

# `python -m pytest` (make test) has the repository root on sys.path; a bare `pytest` not.
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import churn_bench  # noqa: E402

pytestmark = [pytest.mark.bench, pytest.mark.bpf, pytest.mark.integration, pytest.mark.timeout(900)]


def test_churn_quick() -> None:
    require_bpf_privileges()
    reason = churn_bench.unavailable()
    if reason is not None:
        pytest.skip(reason)
    rows = churn_bench.run(quick=True)
    by = {r["metric"]: r for r in rows}
    for r in rows:
        print(r)
    assert by["pods created and deleted"]["value"] == 1_000
    assert by["pods never measured"]["value"] == 0
    # Flat: the pods' entries left the map (what remains is the rest of the machine's
    # traffic, which the map holds whatever Aviator does), well below the peak.
    end = by["agent endpoints map entries at the end"]["value"]
    peak = by["agent endpoints map entries, peak"]["value"]
    first = by["agent endpoints map entries after wave 1"]["value"]
    assert isinstance(end, float) and isinstance(peak, float) and isinstance(first, float)
    assert end < first and peak < churn_bench.MAX_ENDPOINTS
    # Memory: the same at the end as after the first wave, within allocator noise.
    for who in ("agent", "controller"):
        ratio = by[f"{who} RSS at the end"]["ratio"]
        assert isinstance(ratio, float) and ratio < 1.25, who
