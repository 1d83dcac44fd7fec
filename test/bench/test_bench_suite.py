"""Smoke tests of the scale, shards, flap, accuracy, tail-latency, queue-depth, reaction and locality benchmarks at their
quick size: every row is well formed and the figures are sane (not the goals, which
`make bench` reports on; except zero writes in steady state, which must hold)."""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

# `python -m pytest` (make test) has the repository root on sys.path; a bare `pytest` not.
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

Row = dict[str, object]


def bench(name: str) -> ModuleType:
    return importlib.import_module(f"bench.{name}_bench")


def well_formed(rows: list[Row], benchmark: str) -> dict[str, Row]:
    assert rows, "no rows"
    by_metric: dict[str, Row] = {}
    for r in rows:
        assert r["benchmark"] == benchmark
        assert isinstance(r["metric"], str) and r["metric"]
        assert isinstance(r["value"], float)
        assert isinstance(r["unit"], str)
        for key in ("goal", "note"):
            assert key not in r or isinstance(r[key], str)
        assert "ratio" not in r or isinstance(r["ratio"], float)
        by_metric[r["metric"]] = r
    assert len(by_metric) == len(rows), "metrics repeat"
    return by_metric


def value(r: Row) -> float:
    v = r["value"]
    assert isinstance(v, float)
    return v


def skip_if_skipped(rows: list[Row]) -> None:
    if len(rows) == 1 and rows[0]["metric"] == "skipped":
        pytest.skip(str(rows[0].get("note")))


@pytest.mark.bench
@pytest.mark.integration
def test_controller_scale_quick() -> None:
    rows = well_formed(bench("controller_scale").run(quick=True), "controller_scale")
    for fleet in ("1 policy x 200 pods", "20 policies x 10 pods"):
        steady = rows[f"{fleet}: API writes, steady state"]
        assert value(steady) == 0.0, steady
        assert value(rows[f"{fleet}: API writes under churn"]) > 0
        # Speed is the full benchmark's figure; here only that ingestion happened.
        assert value(rows[f"{fleet}: snapshot ingestion per core"]) > 0
        assert 0 < value(rows[f"{fleet}: controller CPU, steady state"]) < 4
        assert 20 < value(rows[f"{fleet}: controller RSS"]) < 2000
        assert 0 < value(rows[f"{fleet}: evaluation time per reconcile (mean)"]) < 10_000
        # The slow pod left (a pod never ejected fails the run instead).
        assert 0 < value(rows[f"{fleet}: latency change -> out of the slices"]) < 60
    for r in rows.values():
        assert math.isfinite(value(r)) and value(r) >= 0


@pytest.mark.bench
@pytest.mark.integration
def test_shards_quick() -> None:
    rows = well_formed(bench("shards").run(quick=True), "shards")
    for n in (1, 2, 4):
        assert value(rows[f"{n} shards: reconciles of the busiest shard"]) > 0
    moved = rows["4 shards, one killed: its policies moved"]
    assert 0 < value(moved) < 120, moved
    assert "caused by the move: 0 " in str(moved["note"]), moved


@pytest.mark.bench
@pytest.mark.integration
def test_flap_quick() -> None:
    rows = well_formed(bench("flap").run(quick=True), "flap")
    on = value(rows["EndpointSlice writes, dampening on"])
    off = value(rows["EndpointSlice writes, dampening off"])
    assert 0 <= on <= off
    assert off > 0, "equal pods under jitter must reshuffle without dampening"


@pytest.mark.bench
@pytest.mark.bpf
def test_accuracy_quick() -> None:
    raw = bench("accuracy").run(quick=True)
    skip_if_skipped(raw)
    rows = well_formed(raw, "accuracy")
    counted = [r for m, r in rows.items() if m.endswith("requests counted by the kernel")]
    assert len(counted) == 4
    assert all(value(r) == 1.0 for r in counted), counted
    assert value(rows["worst p50/p99 error vs kernel-timed client"]) < 10
    # The protocol matrix: every pod has its count rows; a pod whose protocol the
    # program recognises is counted exactly, requests and errors (HTTP/1.1 status
    # lines, HTTP/2 :status and gRPC grpc-status, also those the server's HPACK
    # encoder takes from its dynamic table).
    pods = [
        m.removesuffix(": protocol recognised by the agent")
        for m in rows
        if m.endswith(": protocol recognised by the agent")
    ]
    assert len(pods) >= 10, pods
    for pod in pods:
        requests = rows[f"{pod}: requests counted by the agent"]
        if pod.startswith("http1 "):
            assert value(requests) == 1.0, requests
            assert value(rows[f"{pod}: p50 error vs client"]) < 10
        if value(rows[f"{pod}: protocol recognised by the agent"]) == 1.0:
            assert value(requests) == 1.0, requests
            errors = rows[f"{pod}: errors counted by the agent"]
            assert value(errors) == 1.0, errors


@pytest.mark.bench
@pytest.mark.e2e
def test_tail_latency_quick() -> None:
    raw = bench("tail_latency").run(quick=True)
    skip_if_skipped(raw)
    rows = well_formed(raw, "tail_latency")
    spread = value(rows["(a) no Aviator: client p99"])
    oracle = value(rows["(e) oracle: client p99"])
    assert spread > 400, "a fifth of the pods answer in 500 ms"
    assert 0 < oracle < spread
    for variant in ("(b) percentage 50", "(c) topN 3", "(d) prequal"):
        assert f"{variant}: client p99" in rows, f"{variant} not measured: {raw}"
        assert value(rows[f"{variant}: p99 improvement over (a)"]) > 0


@pytest.mark.bench
@pytest.mark.e2e
def test_queue_depth_quick() -> None:
    module = bench("queue_depth")
    raw = module.run(quick=True)
    skip_if_skipped(raw)
    rows = well_formed(raw, "queue_depth")
    gauge = "(b) prequal, queue gauge"
    assert f"{gauge}: client p99" in rows, f"not measured: {raw}"
    # Spread evenly, the small pod is sent a quarter of the requests, more than its share
    # of the capacity; it serves less than a quarter (what waits in its queue at the end,
    # or times out, is not served; the less so on a busy machine), but more than that share.
    assert value(rows["(a) round robin: share served by the small pod"]) > module.SMALL_CAPACITY
    assert value(rows[f"{gauge}: share served by the small pod"]) < value(
        rows["(a) round robin: share served by the small pod"]
    )
    # Not the p99 ratio (the bench's figure, goal 3 x): on a busy machine its stalls set
    # both p99s (one quick run at load 7 had round robin's at 0.6 x prequal's), while
    # who served the requests is what the gauge decided.
    assert value(rows["client p99: round robin / prequal on the queue gauge"]) > 0
    note = str(rows[f"{gauge}: client p99"].get("note"))
    assert "loads in the status" in note and "=None" not in note, note


@pytest.mark.bench
@pytest.mark.e2e
def test_handoff_quick() -> None:
    raw = bench("handoff").run(quick=True)
    skip_if_skipped(raw)
    rows = well_formed(raw, "handoff")
    oracle = value(rows["(o) oracle: client p99"])
    off = value(rows["(a) hand-off off: client p99 after convergence"])
    on = value(rows["(b) hand-off on: client p99 after convergence"])
    # A smoke test checks that the benchmark runs and reports, not its figures: at the
    # quick size a lightly used pool may hold no connection to a slow pod at all, so
    # whether "off" shows the problem is the full run's row to say.
    assert off > 0 and on > 0 and oracle > 0
    assert value(rows["(b) hand-off on: failed requests"]) == 0


@pytest.mark.bench
@pytest.mark.e2e
def test_handoff_wrk_quick() -> None:
    raw = bench("handoff_wrk").run(quick=True)  # a skipped row when wrk is missing
    skip_if_skipped(raw)
    rows = well_formed(raw, "handoff-wrk")
    oracle = value(rows["(o) oracle: client p99"])
    off = value(rows["(a) hand-off off: client p99 after convergence"])
    on = value(rows["(b) hand-off on: client p99 after convergence"])
    assert off > 0 and on > 0 and oracle > 0
    # wrk retries nothing: a connection ended as a request is on its way would show here.
    assert value(rows["(a) hand-off off: failed requests"]) == 0
    failed = rows["(b) hand-off on: failed requests"]
    assert value(failed) == 0, failed.get("note")  # the note names each error and its time


@pytest.mark.bench
@pytest.mark.e2e
def test_hung_quick() -> None:
    raw = bench("hung").run(quick=True)
    skip_if_skipped(raw)
    rows = well_formed(raw, "hung")
    for interval in ("1", "10"):
        got = rows[f"hung pod: onset -> out of slices (evaluationInterval {interval} s)"]
        # A smoke test: it ran and the pod left (nan: it did not; the full run's figures
        # are the goal's, and the row's note says why).
        assert 0 < value(got) < math.inf, f"{got['metric']}: {got.get('note')}"


@pytest.mark.bench
@pytest.mark.e2e
def test_reaction_quick() -> None:
    raw = bench("reaction").run(quick=True)
    skip_if_skipped(raw)
    rows = well_formed(raw, "reaction")
    for name in ("Aviator", "round robin"):
        assert 0 < value(rows[f"success rate during the episode, {name}"]) <= 100
    assert (Path(ROOT) / "bench" / "out" / "reaction.png").stat().st_size > 10_000


@pytest.mark.bench
@pytest.mark.e2e
def test_locality_quick() -> None:
    raw = bench("locality").run(quick=True)
    skip_if_skipped(raw)
    rows = well_formed(raw, "locality")
    assert value(rows["slice writes while box-a spills"]) == 0.0
    # It spilled (a spill never seen is nan); how fast is the full run's row, against
    # its budget, not a bound for a smoke test on a machine that may be busy.
    assert 0 < value(rows["box-a spills to box-b after its pods turn slow"]) < 30
    assert math.isfinite(value(rows["box-a hinted home again after its pods recover"]))
    # Spilled, zone A's clients reach B's fast pods; PreferClose keeps them on the slow
    # ones. Counted by who served (the p99s are the load's to say on a busy machine).
    share = "box-a requests served by box-a's slow pods"
    assert value(rows[f"latencyAware: {share}"]) < value(rows[f"PreferClose: {share}"]) / 2
