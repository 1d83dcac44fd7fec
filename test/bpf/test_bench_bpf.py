"""Smoke test: the BPF overhead benchmark runs and reports sane figures."""

from __future__ import annotations

import pytest
from conftest import require_bpf_privileges

from aviator.testing.waiting import BPF_COMPILE_BOUND_S
from bench import bpf_overhead_bench

pytestmark = [pytest.mark.bench, pytest.mark.bpf, pytest.mark.timeout(BPF_COMPILE_BOUND_S)]


def test_bpf_overhead_quick() -> None:
    require_bpf_privileges()
    rows = bpf_overhead_bench.run(quick=True)
    by_metric = {r["metric"]: r for r in rows}
    for row in rows:
        assert row["benchmark"] == "bpf_overhead"
        assert isinstance(row["value"], float)
        assert {"metric", "unit"} <= row.keys()
    ratio = by_metric["loopback requests/s traced / untraced"]["value"]
    assert isinstance(ratio, float) and 0.2 < ratio < 5  # noisy at this size: sanity only
    per_event = by_metric["BPF run time per event"]["value"]
    assert isinstance(per_event, float) and 0 < per_event < 100_000
    per_request = by_metric["BPF events per traced request"]["value"]
    # Four data events per request (server in/out, client out/in), plus some ACKs and
    # whatever else the machine's TCP traffic does meanwhile (it is traced too).
    assert isinstance(per_request, float) and 3.5 <= per_request <= 40
    h2c = by_metric.get("h2c: loopback requests/s traced / untraced")
    if h2c is not None:  # skipped (a row saying why) without h2load or the h2 package
        assert isinstance(h2c["value"], float) and 0.2 < h2c["value"] < 5
        assert by_metric["h2c: BPF time per request"]["value"] > 0
