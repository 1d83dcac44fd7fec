"""`kubectl aviator` tables, from a status as the controller writes it (build_status)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aviator.api.status import HandOffStatus, ZoneStatus
from aviator.plugin import report
from aviator.reconcilers.status import Observation, Problem, build_status, pod_status
from aviator.selection.state import BreakerRecord, BreakerStatus, DampeningState, EngineState

JSON = dict[str, Any]
NOW = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
SPEC: JSON = {
    "targetRef": {"kind": "Service", "name": "web"},
    "selection": {"mode": "topN", "topN": 2},
    "circuitBreaker": {"enabled": True, "p99Threshold": "500ms", "consecutiveViolations": 3},
    "dampening": {"enabled": True},
}


def policy(
    engine: EngineState | None = None,
    problems: tuple[Problem, ...] = (),
    zones: tuple[ZoneStatus, ...] = (),
    hand_offs: tuple[HandOffStatus, ...] = (),
) -> JSON:
    rows = [
        pod_status(
            "fast-1", "10.0.0.1", "n1", "active", p50_ms=9.5, p99_ms=12.0, rif=1, samples=90
        ),
        pod_status(
            "fast-2", "10.0.0.2", "n2", "active", p50_ms=10.0, p99_ms=13.0, rif=0, samples=80
        ),
        pod_status("slow-1", "10.0.0.3", "n1", "ejected", p50_ms=480.0, p99_ms=520.0, samples=5),
        pod_status("slow-2", "10.0.0.4", "n2", "standby", p50_ms=470.0, p99_ms=505.0, samples=6),
    ]
    obs = Observation(
        generation=2,
        now_iso="2026-01-01T00:09:00Z",
        active=2,
        total=4,
        p99_ms=12.5,
        source="ebpf",
        problems=problems,
        pods=rows,
        routed_service="web-aviator",
        engine_state=(engine or EngineState(evaluated=True)).to_dict(),
        zones=zones,
        hand_offs=hand_offs,
    )
    return {
        "metadata": {
            "name": "p",
            "namespace": "shop",
            "generation": 2,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": SPEC,
        "status": build_status(obs, {}).to_dict(),
    }


PODS = [
    {"metadata": {"name": n, "uid": f"uid-{n}"}} for n in ("fast-1", "fast-2", "slow-1", "slow-2")
]


def test_status_row() -> None:
    [row] = report.status_rows([policy()], NOW)
    assert row == [
        "shop",
        "p",
        "web",
        "web-aviator (shadow)",
        2,
        4,
        12.5,
        "ebpf",
        "True (Routing)",
        "False (AsExpected)",
        "10m",
    ]


def test_status_marks_an_unobserved_generation() -> None:
    p = policy()
    p["metadata"]["generation"] = 3
    [row] = report.status_rows([p], NOW)
    assert row[8] == "True (Routing) (stale)"


def test_explain_every_pod_in_or_out_and_why() -> None:
    engine = EngineState(
        evaluated=True,
        breaker={
            "uid-slow-1": BreakerRecord(BreakerStatus.OPEN, since=1.0, level=1),
            "uid-slow-2": BreakerRecord(BreakerStatus.CLOSED, violations=2),
        },
        dampening=DampeningState(frozenset({"uid-fast-1", "uid-slow-2"}), 1),
    )
    rows = {r[0]: r for r in report.explain_rows(policy(engine), PODS)}
    assert [rows[n][2] for n in ("fast-1", "fast-2", "slow-1", "slow-2")] == [
        "in",
        "in",
        "out",
        "out",
    ]
    assert rows["slow-1"][8] == "open (ejection 1 in a row)"
    assert rows["slow-1"][10] == "circuit breaker open (ejection 1 in a row)"
    assert rows["slow-2"][8] == "closed (2/3 violations)"
    assert rows["slow-2"][9].startswith("in the pending set")
    assert rows["fast-2"][9] == "not in the pending set"
    assert rows["fast-1"][10] == "chosen by topN"
    assert rows["slow-2"][10] == "not chosen by topN"
    header = report.explain_header(policy(engine))
    assert "topN: the 2 fastest" in header and "eject after 3 x p99 > 500ms" in header


def test_explain_shows_zones_and_hand_offs() -> None:
    zones = (
        ZoneStatus(zone="a", state="spilling", reason="SlowerThanMargin", pods=2, p99_ms=150.0),
        ZoneStatus(zone="b", state="local", reason="WithinMargin", streak=0, pods=2, p99_ms=9.0),
    )
    hand_off = HandOffStatus(
        pod="slow-1",
        node="n1",
        ip="10.0.0.3",
        ports=[8080],
        since="2026-01-01T00:09:00Z",
        until="2026-01-01T00:09:30Z",
    )
    p = policy(zones=zones, hand_offs=(hand_off,))
    header = report.explain_header(p)
    assert "topology: latencyAware, 2 zones, spilling: a" in header
    assert "handing off: slow-1 on n1 (10.0.0.3) until 2026-01-01T00:09:30Z" in header
    assert report.zone_rows(p) == [
        ["a", "spilling", "SlowerThanMargin", 0, 2, 150.0],
        ["b", "local", "WithinMargin", 0, 2, 9.0],
    ]
    assert report.zone_rows(policy()) == []
    assert "topology" not in report.explain_header(policy())


def test_latency_rows_carry_source_and_age() -> None:
    rows = report.latency_rows(policy(), NOW)
    assert rows[0][:7] == ["fast-1", "10.0.0.1", "n1", "active", 9.5, 12.0, 1]
    assert rows[0][7] is None  # no load reported (no selection.prequal.load)
    assert rows[0][8] == 90
    assert rows[0][9:12] == [None, None, None]  # no keep-warm or probe figures reported
    assert rows[0][13:] == ["ebpf", "1m"]


def test_policies_for_service_by_target_or_routed_name() -> None:
    p = policy()
    assert report.policies_for_service([p], "web") == [p]
    assert report.policies_for_service([p], "web-aviator") == [p]
    assert report.policies_for_service([p], "other") == []


def test_table_aligns_and_dashes_empty_cells() -> None:
    text = report.table(["a", "bb"], [["x", None], ["longer", 1.25]])
    assert text.splitlines() == ["A        BB", "x        -", "longer   1.2"]
