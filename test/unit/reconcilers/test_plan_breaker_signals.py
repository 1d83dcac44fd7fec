"""The plan and the breaker's newer signals: a stalled pod evaluated at once (not at the
next interval), the error rate and protocol in the status rows, OpaqueLatency."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from reconciler_objects import make_service
from test_plan import (
    FAST,
    JSON,
    T0,
    Memory,
    apply,
    caches_with,
    four_pods,
    later,
    make_policy,
    slice_pods,
)

from aviator.latency.histogram import Histogram
from aviator.reconcilers.cadence import URGENT_GAP_S, evaluation_due, urgent_wait
from aviator.reconcilers.latencies import PodLatencies
from aviator.reconcilers.memory import Clock, memory_for
from aviator.reconcilers.plan import Plan, measurement, plan
from aviator.reconcilers.status import OPAQUE_LATENCY, REASON_NO_RECOGNISED_FRAMING
from aviator.reconcilers.view import Caches, gather
from aviator.selection.types import LatencyEstimate

SPEC: JSON = {
    "targetRef": {"name": "web"},
    "evaluationInterval": "30s",
    "selection": {"mode": "percentage", "percentage": 100},
    "dampening": {"enabled": False},
    "circuitBreaker": {"enabled": True, "p99Threshold": "500ms", "consecutiveViolations": 3},
}


def estimates(by_pod: Mapping[str, LatencyEstimate]) -> PodLatencies:
    def merged(pods: Sequence[JSON]) -> Histogram:
        return Histogram.from_values([10_000])

    return PodLatencies(dict(by_pod), merged)


def healthy(**extra: object) -> LatencyEstimate:
    settings: dict[str, object] = {"samples": 100, "age_s": 0.1, "source": "ebpf"}
    settings.update(extra)
    return LatencyEstimate(FAST, FAST, **settings)  # type: ignore[arg-type]


NAMES = ("fast-1", "fast-2", "slow-1", "slow-2")  # all equally fast here


def step(caches: Caches, memory: Memory | None, clock: Clock, lat: PodLatencies) -> Plan:
    view = gather(caches, caches.policies.get("default/p") or {})
    mem = memory_for(view, memory)
    assert measurement(view, mem, clock) is not None
    todo = plan(view, mem, clock, lat)
    apply(caches, todo)
    return todo


def test_a_serving_pod_that_stalls_is_ejected_at_once_not_at_the_next_interval() -> None:
    caches = caches_with(make_policy(spec=SPEC), make_service(), *four_pods())
    all_fine = estimates({n: healthy() for n in NAMES})
    todo = step(caches, None, T0, all_fine)
    assert slice_pods(caches, "web-aviator") == set(NAMES)
    assert todo.requeue_after == 30.0
    # 2 s later (the interval is 30 s), an agent reports a request open for 0.6 s.
    stalled = estimates({**all_fine.by_pod, "slow-1": healthy(oldest_open_ms=600.0, rif=1)})
    todo = step(caches, todo.memory, later(T0, 2.0), stalled)
    assert slice_pods(caches, "web-aviator") == set(NAMES) - {"slow-1"}
    assert any(e.reason == "PodEjected" for e in todo.events)
    assert todo.status is not None
    row = next(r for r in todo.status["pods"] if r["name"] == "slow-1")
    assert (row["state"], row["reason"], row["oldestOpenMs"]) == (
        "ejected",
        "OpenRequestAboveThreshold",
        600.0,
    )
    # The next regular evaluation is an interval after the urgent one.
    assert todo.requeue_after == 30.0


def test_an_urgent_evaluation_runs_once_per_stall_and_waits_out_the_gap() -> None:
    # Cap 0: the stalled pod cannot be ejected, so it stays serving and stalled.
    spec = {**SPEC, "circuitBreaker": {**SPEC["circuitBreaker"], "maxEjectionPercent": 0}}
    caches = caches_with(make_policy(spec=spec), make_service(), *four_pods())
    all_fine = estimates({n: healthy() for n in NAMES})
    first = step(caches, None, T0, all_fine)
    stalled = estimates({**all_fine.by_pod, "slow-1": healthy(oldest_open_ms=600.0)})
    # Too soon after the last evaluation: carried over, looked at again after the gap.
    soon = step(caches, first.memory, later(T0, URGENT_GAP_S / 2), stalled)
    assert soon.memory is not None and soon.memory.last_evaluation == T0.store
    assert soon.requeue_after is not None
    assert 0 < soon.requeue_after <= URGENT_GAP_S / 2 + 1e-9
    urgent = step(caches, soon.memory, later(T0, 1.0), stalled)
    assert urgent.memory is not None and urgent.memory.last_evaluation == T0.store + 1.0
    assert urgent.memory.stalled == {"slow-1"}
    # Still stalled (kept by the cap): no evaluation until the interval.
    again = step(caches, urgent.memory, later(T0, 2.0), stalled)
    assert again.memory is not None and again.memory.last_evaluation == T0.store + 1.0


def test_urgent_wait_only_for_new_stalls_of_serving_pods() -> None:
    args = {"serving": {"a", "b"}, "last_evaluation": 10.0, "now": 11.0}
    assert urgent_wait(seen=set(), stalled={"a"}, **args) == 0.0  # type: ignore[arg-type]
    assert urgent_wait(seen={"a"}, stalled={"a"}, **args) is None  # type: ignore[arg-type]
    assert urgent_wait(seen=set(), stalled={"c"}, **args) is None  # type: ignore[arg-type]
    wait = urgent_wait(serving={"a"}, last_evaluation=10.0, now=10.05, seen=set(), stalled={"a"})
    assert wait is not None and abs(wait - (URGENT_GAP_S - 0.05)) < 1e-9
    assert (
        urgent_wait(serving=None, last_evaluation=None, now=0.0, seen=set(), stalled={"a"}) is None
    )
    assert evaluation_due(evaluated=False, next_evaluation=50.0, interval_s=5.0, now=0.0)
    assert not evaluation_due(evaluated=True, next_evaluation=50.0, interval_s=5.0, now=0.0)


def test_error_rates_and_protocols_in_the_rows_and_opaque_pods_get_a_condition() -> None:
    spec = {**SPEC, "circuitBreaker": {**SPEC["circuitBreaker"], "errorRatePercent": 50}}
    caches = caches_with(make_policy(spec=spec), make_service(), *four_pods())
    lat = estimates(
        {
            "fast-1": healthy(protocol="h2", statuses=200, errors=3),
            "fast-2": healthy(protocol="grpc", statuses=100, errors=0),
            "slow-1": healthy(protocol="opaque"),
            "slow-2": healthy(protocol="http1", statuses=50, errors=1),
        }
    )
    todo = step(caches, None, T0, lat)
    assert todo.status is not None
    rows = {r["name"]: r for r in todo.status["pods"]}
    assert (rows["fast-1"]["protocol"], rows["fast-1"]["errorRatePercent"]) == ("h2", 1.5)
    assert rows["fast-1"]["responses"] == 200
    assert rows["fast-2"]["errorRatePercent"] == 0.0
    # Opaque: no status read, so no responses and no rate (never "0 %").
    assert rows["slow-1"]["protocol"] == "opaque"
    assert "responses" not in rows["slow-1"] and "errorRatePercent" not in rows["slow-1"]
    opaque = next(c for c in todo.status["conditions"] if c["type"] == OPAQUE_LATENCY)
    assert (opaque["status"], opaque["reason"]) == ("True", REASON_NO_RECOGNISED_FRAMING)
    assert "1 of 4 measured pods (slow-1)" in opaque["message"]
    assert "first response bytes" in opaque["message"]
    # No opaque pod: no such condition.
    lat.by_pod["slow-1"] = healthy(protocol="http1", statuses=10)
    todo = step(caches, todo.memory, later(T0, 30.0), lat)
    assert todo.status is not None
    assert OPAQUE_LATENCY not in {c["type"] for c in todo.status["conditions"]}


def test_a_pod_answering_half_errors_is_ejected_by_the_error_rule() -> None:
    spec = {
        **SPEC,
        "circuitBreaker": {
            **SPEC["circuitBreaker"],
            "errorRatePercent": 50,
            "consecutiveViolations": 1,
        },
    }
    caches = caches_with(make_policy(spec=spec), make_service(), *four_pods())
    lat = estimates({n: healthy(protocol="http1", statuses=100) for n in NAMES})
    todo = step(caches, None, T0, lat)
    lat.by_pod["slow-2"] = healthy(protocol="http1", statuses=100, errors=50)
    todo = step(caches, todo.memory, later(T0, 30.0), lat)
    assert slice_pods(caches, "web-aviator") == set(NAMES) - {"slow-2"}
    assert todo.status is not None
    row = next(r for r in todo.status["pods"] if r["name"] == "slow-2")
    assert (row["reason"], row["errorRatePercent"]) == ("ErrorRateAboveThreshold", 50.0)
