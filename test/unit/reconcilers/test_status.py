from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.api.status import PodStatus
from aviator.reconcilers.status import (
    Observation,
    Problem,
    build_status,
    effective_source,
    pod_status,
    status_changed,
    status_patch,
)

JSON = dict[str, object]


def row(
    name: str,
    ip: str,
    node: str,
    state: str,
    p50: float | None = None,
    p99: float | None = None,
    rif: int | None = None,
    samples: int = 0,
    reason: str | None = None,
) -> PodStatus:
    return pod_status(
        name, ip, node, state, p50_ms=p50, p99_ms=p99, rif=rif, samples=samples, reason=reason
    )


def status_json(o: Observation, previous: dict[str, object]) -> dict[str, object]:
    return build_status(o, previous).to_dict()


def obs(**kw: object) -> Observation:
    base: dict[str, object] = {
        "generation": 1,
        "now_iso": "2026-01-01T00:00:00Z",
        "active": 2,
        "total": 4,
        "p99_ms": 12.0,
        "source": "ebpf",
        "routed_service": "web-aviator",
        "pods": [
            row("a", "10.0.0.1", "n", "active", 5.0, 12.0, 0, 100),
            row("b", "10.0.0.2", "n", "ejected", 400.0, 500.0, 3, 100, "PodEjected"),
        ],
        "engine_state": {"v": 1},
    }
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


def first_b() -> PodStatus:
    return row("b", "10.0.0.2", "n", "ejected", 400.0, 500.0, 3, 100, "PodEjected")


def cond(status: dict[str, object], ctype: str) -> dict[str, object]:
    return next(c for c in status["conditions"] if c["type"] == ctype)  # type: ignore[attr-defined,no-any-return]


def test_fields_and_ready_condition() -> None:
    s = status_json(obs(), {})
    assert (s["activePods"], s["totalPods"], s["p99LatencyMs"], s["source"]) == (2, 4, 12.0, "ebpf")
    assert s["observedGeneration"] == 1 and s["ejectedPods"] == ["b"]
    assert s["pods"][0] == {
        "name": "a", "ip": "10.0.0.1", "node": "n", "state": "active",
        "samples": 100, "p50Ms": 5.0, "p99Ms": 12.0, "rif": 0,
    }  # fmt: skip
    assert cond(s, "Ready")["status"] == "True" and cond(s, "Degraded")["status"] == "False"
    assert s["engineState"] == {"v": 1}


def test_blocking_problem_sets_ready_false_and_degraded() -> None:
    s = status_json(obs(problems=[Problem("ServiceNotFound", "Service web not found")]), {})
    assert cond(s, "Ready")["status"] == "False"
    assert cond(s, "Ready")["reason"] == "ServiceNotFound"
    assert cond(s, "Degraded")["reason"] == "ServiceNotFound"


def test_non_blocking_problem_keeps_ready() -> None:
    s = status_json(obs(problems=[Problem("Overload", "most pods slow")]), {})
    assert cond(s, "Ready")["status"] == "True"
    assert cond(s, "Degraded")["status"] == "True" and cond(s, "Degraded")["reason"] == "Overload"


def test_transition_time_kept_while_status_unchanged() -> None:
    first = status_json(obs(), {})
    later = status_json(obs(now_iso="2026-01-01T00:05:00Z"), first)
    assert cond(later, "Ready")["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert not status_changed(first, later)
    flipped = status_json(
        obs(now_iso="2026-01-01T00:06:00Z", problems=[Problem("Conflict", "x")]), later
    )
    assert cond(flipped, "Ready")["lastTransitionTime"] == "2026-01-01T00:06:00Z"
    assert status_changed(later, flipped)


def test_latency_jitter_within_tolerance_is_no_change() -> None:
    first = status_json(obs(), {})
    jitter = status_json(
        obs(
            p99_ms=12.9,
            pods=[
                row("a", "10.0.0.1", "n", "active", 5.3, 11.2, 0, 100),
                row("b", "10.0.0.2", "n", "ejected", 390.0, 520.0, 3, 100, "PodEjected"),
            ],
        ),
        first,
    )
    assert not status_changed(first, jitter)
    noisy_counts = status_json(
        obs(
            pods=[
                row("a", "10.0.0.1", "n", "active", 5.0, 12.0, 1, 140),
                row("b", "10.0.0.2", "n", "ejected", 400.0, 500.0, 4, 160, "PodEjected"),
            ]
        ),
        first,
    )
    assert not status_changed(first, noisy_counts)
    no_data = status_json(
        obs(pods=[row("a", "10.0.0.1", "n", "active", 5.0, 12.0, 0, 0), first_b()]), first
    )
    assert status_changed(first, no_data)
    moved = status_json(obs(p99_ms=20.0), first)
    assert status_changed(first, moved)


def test_window_counts_move_with_the_reports_the_window_holds_without_a_write() -> None:
    def counted(samples: int, rif: int = 0) -> JSON:
        pods = [row("a", "10.0.0.1", "n", "active", 5.0, 12.0, rif, samples), first_b()]
        return status_json(obs(pods=pods), {})

    # Paced reports of 5 s in a 10 s window: one, two or three reports' samples.
    assert not status_changed(counted(250), counted(750))
    assert not status_changed(counted(750), counted(500))
    assert status_changed(counted(500), counted(100))  # a fifth of the traffic: said
    assert status_changed(counted(100), counted(0))  # data vanished
    # Requests in flight are a gauge of the latest report: more than half is a change.
    assert not status_changed(counted(250, rif=10), counted(250, rif=14))
    assert status_changed(counted(250, rif=4), counted(250, rif=12))


def test_real_changes_are_changes() -> None:
    first = status_json(obs(), {})
    assert status_changed(None, first)
    assert status_changed(first, status_json(obs(active=3), first))
    assert status_changed(first, status_json(obs(generation=2), first))
    assert status_changed(first, status_json(obs(engine_state={"v": 2}), first))
    assert status_changed(first, status_json(obs(source="mixed"), first))


def test_effective_source() -> None:
    assert effective_source([]) == "none"
    assert effective_source([None, "ebpf"]) == "ebpf"
    assert effective_source(["ebpf", "probe"]) == "mixed"


@settings(max_examples=200, deadline=None)
@given(p=st.floats(0.01, 1e5), factor=st.floats(0.5, 2.0))
def test_write_decision_follows_tolerance(p: float, factor: float) -> None:
    first = status_json(obs(p99_ms=p), {})
    second = status_json(obs(p99_ms=p * factor), first)
    changed = status_changed(first, second)
    a, b = first["p99LatencyMs"], second["p99LatencyMs"]  # as written (rounded to µs)
    rel = abs(a - b) / max(a, b)
    if rel > 0.1001:
        assert changed
    if rel < 0.0999:
        assert not changed


def test_the_unmeasurable_message_names_pods_nodes_maps_and_the_flag() -> None:
    from aviator.reconcilers.status import unmeasurable_message

    msg = unmeasurable_message(
        {"b": ("node-a", ("endpoints",)), "c": ("node-b", ("endpoints", "h2conns"))}
    )
    assert msg.startswith("2 pods (b, c) cannot be measured")
    assert "node node-a: endpoints; node node-b: endpoints, h2conns" in msg
    assert "--max-endpoints and --max-h2-connections" in msg


def test_a_status_patch_carries_only_what_changed_and_drops_what_went() -> None:
    """Against our own last write, only the changed fields go, and a breaker record of a
    pod that left goes as null (a merge patch would otherwise keep it for ever)."""
    before = obs(engine_state={"breaker": {"uid-a": {"status": "closed"}, "uid-gone": {}}})
    previous = status_json(before, {})
    after = obs(
        now_iso="2026-01-01T00:00:05Z",
        p99_ms=40.0,
        engine_state={"breaker": {"uid-a": {"status": "closed"}}},
    )
    change = status_patch(previous, after)
    assert change is not None
    _, body = change
    assert body == {
        "p99LatencyMs": 40.0,
        "lastEvaluationTime": "2026-01-01T00:00:05Z",
        "engineState": {"breaker": {"uid-gone": None}},
    }
    # Not knowing what the server holds (the cache), every field goes, removals too.
    _, whole = status_patch(previous, after, exact=False) or ({}, {})
    assert whole["pods"] == previous["pods"] and whole["engineState"] == {
        "breaker": {"uid-a": {"status": "closed"}, "uid-gone": None}
    }
