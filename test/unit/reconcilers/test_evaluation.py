from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest
from reconciler_objects import make_pod

from aviator.api.types import AviatorPolicySpec
from aviator.reconcilers.evaluation import (
    SPEC_FIELDS,
    InvalidSpec,
    ParsedPolicies,
    parse_policy,
    select,
    spec_message,
)
from aviator.reconcilers.podfacts import pod_facts
from aviator.selection.types import (
    BreakerPolicy,
    DampeningPolicy,
    LatencyEstimate,
    SelectionPolicy,
)

ENGINE_PARAMETERS = (SelectionPolicy, BreakerPolicy, DampeningPolicy)


def raw(spec: dict[str, object], ns: str = "default") -> dict[str, object]:
    return {"metadata": {"name": "p", "namespace": ns}, "spec": spec}


def test_defaults_and_routing() -> None:
    parsed = parse_policy(raw({"targetRef": {"name": "web"}}))
    assert parsed.routed_service == "web-aviator" and parsed.mode == "shadow"
    assert parsed.interval_s == 5.0 and parsed.latency_source == "ebpf"
    takeover = parse_policy(raw({"targetRef": {"name": "web"}, "routing": {"mode": "takeover"}}))
    assert takeover.routed_service == "web"


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"targetRef": {"name": "web"}, "selection": {"mode": "fastest"}},
        {"targetRef": {"name": "web"}, "evaluationInterval": "1ms"},
        {"targetRef": {"name": "web", "namespace": "other"}},
        {"targetRef": {"name": "web"}, "routing": {"serviceName": "web"}},
    ],
)
def test_invalid_specs_name_the_problem(spec: dict[str, object]) -> None:
    with pytest.raises(InvalidSpec):
        parse_policy(raw(spec))


def test_invalid_spec_messages_name_spec_fields() -> None:
    with pytest.raises(InvalidSpec, match=r"^spec\.latencyThreshold: .*greater than 0"):
        parse_policy(raw({"targetRef": {"name": "web"}, "latencyThreshold": "0"}))


def test_engine_messages_are_translated_to_spec_fields() -> None:
    # The API's rules hold every engine bound; should one ever slip through, the
    # message still names the spec field, never the engine's parameter.
    for parameter in SPEC_FIELDS:
        assert parameter in {f.name for cls in ENGINE_PARAMETERS for f in fields(cls)}
    assert spec_message("latency_threshold_ms must be > 0") == "spec.latencyThreshold: must be > 0"
    assert spec_message("something odd") == "spec: something odd"
    for field in SPEC_FIELDS.values():
        # errorRatePercent has no default (unset: off): set it so it is in the spec.
        # prequal.load likewise (unset: requests in flight alone).
        minimal = {
            "targetRef": {"name": "web"},
            "circuitBreaker": {"errorRatePercent": 50},
            "selection": {"prequal": {"load": {"metric": "q", "port": 9090}}},
        }
        spec: Any = AviatorPolicySpec.from_dict(minimal).to_dict()
        for part in field.split(".")[1:]:
            spec = spec[part]  # every named field exists in the spec


def test_same_namespace_target_ref_is_fine() -> None:
    parse_policy(raw({"targetRef": {"name": "web", "namespace": "default"}}))


def test_select_fast_pods_and_persistable_state() -> None:
    parsed = parse_policy(
        raw({"targetRef": {"name": "web"}, "selection": {"mode": "topN", "topN": 1}})
    )
    pods = [pod_facts(make_pod("a", "10.0.0.1")), pod_facts(make_pod("b", "10.0.0.2"))]
    lat = {
        "a": LatencyEstimate(5, 10, samples=100, age_s=0.1, p90_ms=8, source="ebpf"),
        "b": LatencyEstimate(50, 100, samples=100, age_s=0.1, p90_ms=80, source="ebpf"),
    }
    out, _ = select(parsed, pods, lat, {"a": True, "b": True}, set(), None, 1000.0)
    assert out.active == {"a"} and out.states == {"a": "active", "b": "standby"}
    again, _ = select(parsed, pods, lat, {"a": True, "b": True}, {"a"}, out.engine_state, 1001.0)
    assert again.active == {"a"} and again.engine_state == out.engine_state


def test_carry_over_only_while_every_serving_pod_stays() -> None:
    from aviator.reconcilers.evaluation import Outcome, carry_over

    prev = Outcome(
        active={"a", "b"},
        states={"a": "active", "b": "active", "c": "standby"},
        reasons={},
        engine_state={"version": 1},
    )
    out = carry_over(prev, {"a", "b", "d"}, 1)  # c left, d is new: no serving pod lost
    assert out is not None and out.active == {"a", "b"} and out.events == []
    assert out.states == {"a": "active", "b": "active", "d": "standby"}
    assert out.engine_state == prev.engine_state
    assert carry_over(prev, {"a", "c"}, 1) is None  # a serving pod left: engine now
    assert carry_over(prev, {"a", "b"}, 3) is None  # below the floor: engine now


@pytest.mark.parametrize(
    ("mode", "top_n", "percentage"),
    [
        ("topN", 3, None),
        ("percentage", None, 50),
        ("threshold", None, None),
        ("prequal", None, 50),
    ],
)
def test_each_budget_belongs_to_its_own_mode(
    mode: str, top_n: int | None, percentage: int | None
) -> None:
    """The API always defaults topN and percentage; only the chosen mode's budget is
    passed on. Prequal takes the percentage share of cold pods: all of them would
    include idle slow pods, which are the coldest."""
    parsed = parse_policy(raw({"targetRef": {"name": "web"}, "selection": {"mode": mode}}))
    assert (parsed.selection.top_n, parsed.selection.percentage) == (top_n, percentage)


def versioned(spec: dict[str, object], uid: str = "u1", generation: int = 1) -> dict[str, Any]:
    policy = raw(spec)
    policy["metadata"] = {"name": "p", "namespace": "default", "uid": uid, "generation": generation}
    return policy


def test_a_policy_is_parsed_once_per_generation() -> None:
    memo = ParsedPolicies()
    first = memo.of(versioned({"targetRef": {"name": "web"}}))
    # A status write gives a new object (and resourceVersion) of the same generation.
    again = memo.of(versioned({"targetRef": {"name": "web"}}))
    assert again is first and memo.parses == 1
    changed = memo.of(versioned({"targetRef": {"name": "api"}}, generation=2))
    assert changed.target == "api" and memo.parses == 2
    other = memo.of(versioned({"targetRef": {"name": "db"}}, uid="u2"))
    assert other.target == "db" and memo.parses == 3
    # Without a uid and a generation there is nothing to know it by: parsed each time.
    memo.of(raw({"targetRef": {"name": "web"}}))
    memo.of(raw({"targetRef": {"name": "web"}}))
    assert memo.parses == 5 and len(memo) == 3


def test_an_invalid_spec_is_remembered_and_raised_each_time() -> None:
    memo = ParsedPolicies()
    bad = versioned({"targetRef": {"name": "web"}, "latencyThreshold": "0"})
    messages = []
    for _ in range(2):
        with pytest.raises(InvalidSpec) as caught:
            memo.of(bad)
        messages.append(str(caught.value))
    assert messages[0] == messages[1] and messages[0].startswith("spec.latencyThreshold")
    assert memo.parses == 1


def test_the_memo_is_bounded() -> None:
    memo = ParsedPolicies(limit=3)
    for generation in range(1, 8):
        memo.of(versioned({"targetRef": {"name": "web"}}, generation=generation))
        assert len(memo) <= 3
