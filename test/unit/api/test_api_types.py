"""The typed model: product defaults, defensive decoding, errors that name the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.api import (
    AviatorPolicySpec,
    AviatorPolicyStatus,
    Condition,
    Duration,
    LatencySource,
    PodStatus,
    PolicyError,
    RoutingMode,
    SelectionMode,
    from_dict,
)
from aviator.api.types import API_VERSION, KIND, LoadCombine

ROOT = Path(__file__).resolve().parents[3]
SAMPLES = ROOT / "config" / "samples"

# The product sheet's table, plus the fields this project adds.
PRODUCT_DEFAULTS: dict[str, Any] = {
    "targetRef": {"kind": "Service", "name": "web"},
    "latencyThreshold": "100ms",
    "evaluationInterval": "5s",
    "latencySource": "ebpf",
    "targetPort": 8080,
    "probePath": "/",
    "selection": {
        "mode": "percentage",
        "topN": 3,
        "percentage": 50,
        "prequal": {"rifQuantile": 0.84},
    },
    "circuitBreaker": {
        "enabled": False,
        "p99Threshold": "500ms",
        "consecutiveViolations": 3,
        "recoveryInterval": "30s",
        "maxEjectionPercent": 50,
        "errorRateMinResponses": 20,
    },
    "dampening": {"enabled": True, "thresholdPercent": 20, "consecutiveIntervals": 3},
    "minEndpoints": 1,
    "routing": {"mode": "shadow", "handoff": {"enabled": True, "period": "5s"}},
    "topology": {"mode": "service", "marginPercent": 50, "spillAfter": 2, "returnAfter": 3},
}


def policy(spec: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "generation": 4, **meta},
        "spec": {"targetRef": {"name": "web"}} if spec is None else spec,
    }


def test_minimal_spec_gets_every_product_default() -> None:
    p = from_dict(policy())
    assert p.spec.to_dict() == PRODUCT_DEFAULTS
    s = p.spec
    assert s.latency_threshold == Duration.parse("100ms")
    assert s.evaluation_interval.seconds == 5.0
    assert s.latency_source is LatencySource.EBPF
    assert s.selection.mode is SelectionMode.PERCENTAGE
    assert s.routing.mode is RoutingMode.SHADOW
    assert s.routed_service == "web-aviator"
    assert (p.key, p.uid, p.generation) == ("ns/p", "u-1", 4)


def test_nested_objects_default_field_by_field() -> None:
    """An object written under an older CRD lacks newer fields: they get defaults."""
    spec = {"targetRef": {"name": "web"}, "selection": {"mode": "topN"}, "circuitBreaker": {}}
    s = AviatorPolicySpec.from_dict(spec)
    assert s.selection.mode == "topN"
    assert s.selection.top_n == 3
    assert s.selection.prequal.rif_quantile == 0.84
    assert s.circuit_breaker.max_ejection_percent == 50


def test_json_null_counts_as_absent() -> None:
    s = AviatorPolicySpec.from_dict(
        {"targetRef": {"name": "web"}, "selection": None, "minEndpoints": None}
    )
    assert s.selection.percentage == 50
    assert s.min_endpoints == 1


def test_explicit_values_are_kept() -> None:
    spec = copy.deepcopy(PRODUCT_DEFAULTS)
    spec.update(
        latencyThreshold="1m30s",
        latencySource="probe",
        selection={"mode": "prequal", "prequal": {"rifQuantile": 0.5}},
        routing={"mode": "shadow", "serviceName": "web-fast"},
    )
    s = AviatorPolicySpec.from_dict(spec)
    assert s.latency_threshold.seconds == 90.0
    assert s.latency_source == "probe"
    assert s.selection.prequal.rif_quantile == 0.5
    assert s.routed_service == "web-fast"
    assert s.to_dict()["latencyThreshold"] == "1m30s"


def test_takeover_routes_the_target_itself() -> None:
    s = AviatorPolicySpec.from_dict({"targetRef": {"name": "web"}, "routing": {"mode": "takeover"}})
    assert s.routed_service == "web"


def test_to_dict_round_trips() -> None:
    s = AviatorPolicySpec.from_dict(
        {"targetRef": {"name": "web"}, "selection": {"mode": "threshold"}, "targetPort": 9000}
    )
    assert AviatorPolicySpec.from_dict(s.to_dict()) == s


def test_integral_float_is_an_integer() -> None:
    s = AviatorPolicySpec.from_dict(
        {"targetRef": {"name": "web"}, "selection": {"percentage": 40.0}}
    )
    assert s.selection.percentage == 40
    assert isinstance(s.selection.percentage, int)


# (spec change, field path the error must name, words in the message)
BAD_SPECS: list[tuple[dict[str, Any], str, str]] = [
    ({"selection": {"percentage": 0}}, "spec.selection.percentage", "between 1 and 100"),
    ({"selection": {"percentage": 101}}, "spec.selection.percentage", "between 1 and 100"),
    ({"selection": {"topN": 0}}, "spec.selection.topN", "at least 1"),
    ({"evaluationInterval": "5 seconds"}, "spec.evaluationInterval", "invalid duration"),
    ({"latencyThreshold": "-1s"}, "spec.latencyThreshold", "must not be negative"),
    ({"evaluationInterval": "100ms"}, "spec.evaluationInterval", "at least 200ms"),
    ({"evaluationInterval": "61m"}, "spec.evaluationInterval", "at most 1h"),
    ({"latencyThreshold": "0"}, "spec.latencyThreshold", "greater than 0"),
    ({"latencyThreshold": "0s"}, "spec.latencyThreshold", "greater than 0"),
    ({"latencyThreshold": "2562047h"}, "spec.latencyThreshold", "at most 1h"),
    ({"circuitBreaker": {"p99Threshold": "0ms"}}, "spec.circuitBreaker.p99Threshold", "than 0"),
    ({"circuitBreaker": {"p99Threshold": "90m"}}, "spec.circuitBreaker.p99Threshold", "at most 1h"),
    (
        {"circuitBreaker": {"recoveryInterval": "0"}},
        "spec.circuitBreaker.recoveryInterval",
        "than 0",
    ),
    (
        {"circuitBreaker": {"recoveryInterval": "-1s"}},
        "spec.circuitBreaker.recoveryInterval",
        "negative",
    ),
    (
        {"targetRef": {"kind": "Deployment", "name": "web"}},
        "spec.targetRef.kind",
        "must be Service",
    ),
    ({"targetRef": {"name": ""}}, "spec.targetRef.name", "must not be empty"),
    ({"targetRef": {"name": "Web_1"}}, "spec.targetRef.name", "valid Service name"),
    ({"targetRef": {}}, "spec.targetRef.name", "is required"),
    ({"selection": {"mode": "fastest"}}, "spec.selection.mode", "must be one of topN, percentage"),
    ({"latencySource": "magic"}, "spec.latencySource", "must be one of ebpf, probe"),
    (
        {"dampening": {"thresholdPercent": 101}},
        "spec.dampening.thresholdPercent",
        "between 0 and 100",
    ),
    (
        {"dampening": {"thresholdPercent": -1}},
        "spec.dampening.thresholdPercent",
        "between 0 and 100",
    ),
    (
        {"dampening": {"consecutiveIntervals": 0}},
        "spec.dampening.consecutiveIntervals",
        "at least 1",
    ),
    (
        {"circuitBreaker": {"consecutiveViolations": 0}},
        "spec.circuitBreaker.consecutiveViolations",
        "at least 1",
    ),
    (
        {"circuitBreaker": {"maxEjectionPercent": 101}},
        "spec.circuitBreaker.maxEjectionPercent",
        "between 0 and 100",
    ),
    (
        {"circuitBreaker": {"errorRatePercent": 0}},
        "spec.circuitBreaker.errorRatePercent",
        "must be in (0, 100]",
    ),
    (
        {"circuitBreaker": {"errorRatePercent": 100.5}},
        "spec.circuitBreaker.errorRatePercent",
        "must be in (0, 100]",
    ),
    (
        {"circuitBreaker": {"errorRateMinResponses": 0}},
        "spec.circuitBreaker.errorRateMinResponses",
        "at least 1",
    ),
    (
        {"circuitBreaker": {"p99Threshold": "fast"}},
        "spec.circuitBreaker.p99Threshold",
        "invalid duration",
    ),
    (
        {"selection": {"prequal": {"rifQuantile": 0}}},
        "spec.selection.prequal.rifQuantile",
        "(0, 1)",
    ),
    (
        {"selection": {"prequal": {"rifQuantile": 1}}},
        "spec.selection.prequal.rifQuantile",
        "(0, 1)",
    ),
    ({"minEndpoints": 0}, "spec.minEndpoints", "at least 1"),
    ({"targetPort": 65536}, "spec.targetPort", "between 1 and 65535"),
    ({"probePath": "healthz"}, "spec.probePath", "must start with '/'"),
    ({"routing": {"mode": "sideways"}}, "spec.routing.mode", "must be one of shadow, takeover"),
    (
        {"routing": {"serviceName": "web"}},
        "spec.routing.serviceName",
        "must differ from targetRef.name",
    ),
    (
        {"routing": {"mode": "takeover", "serviceName": "x"}},
        "spec.routing.serviceName",
        "only to routing.mode shadow",
    ),
    ({"targetRef": {"name": "a" * 56}}, "spec.targetRef.name", "at most 55 characters"),
    (
        {"selection": {"percentage": "50"}},
        "spec.selection.percentage",
        "must be an integer, got string",
    ),
    ({"selection": {"percentage": 50.5}}, "spec.selection.percentage", "must be an integer"),
    ({"selection": {"topN": True}}, "spec.selection.topN", "must be an integer, got boolean"),
    ({"dampening": {"enabled": "yes"}}, "spec.dampening.enabled", "must be true or false"),
    ({"selection": [1]}, "spec.selection", "must be an object"),
    (
        {"selection": {"prequal": {"rifQuantile": float("nan")}}},
        "spec.selection.prequal.rifQuantile",
        "finite",
    ),
]


def _merge(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.mark.parametrize(
    ("change", "path", "words"), BAD_SPECS, ids=[b[1] + ":" + b[2] for b in BAD_SPECS]
)
def test_bad_spec_is_a_clear_error_naming_the_field(
    change: dict[str, Any], path: str, words: str
) -> None:
    spec = _merge({"targetRef": {"name": "web"}}, change)
    if change.get("targetRef") == {}:
        spec["targetRef"] = {}
    with pytest.raises(PolicyError) as exc:
        from_dict(policy(spec))
    paths = [e.path for e in exc.value.errors]
    assert path in paths, exc.value.errors
    message = next(e.message for e in exc.value.errors if e.path == path)
    assert words in message
    assert str(exc.value).startswith("invalid AviatorPolicy ns/p: ")
    assert f"{path}: " in str(exc.value)


def test_every_error_is_reported_at_once() -> None:
    spec = {"targetRef": {"name": "web"}, "selection": {"mode": "x", "topN": 0}, "targetPort": 0}
    with pytest.raises(PolicyError) as exc:
        AviatorPolicySpec.from_dict(spec)
    assert {e.path for e in exc.value.errors} == {
        "spec.selection.mode",
        "spec.selection.topN",
        "spec.targetPort",
    }


def test_missing_spec_and_long_name() -> None:
    obj = policy()
    del obj["spec"]
    obj["metadata"]["name"] = "n" * 64
    with pytest.raises(PolicyError) as exc:
        from_dict(obj)
    assert {e.path for e in exc.value.errors} == {"spec", "metadata.name"}


def test_unknown_fields_are_ignored_like_the_api_server_prunes_them() -> None:
    s = AviatorPolicySpec.from_dict({"targetRef": {"name": "web"}, "futureField": 1})
    assert s.target_ref.name == "web"


def test_every_sample_decodes() -> None:
    samples = sorted(SAMPLES.glob("aviator_v1alpha1_*.yaml"))
    assert len(samples) >= 3
    for path in samples:
        p = from_dict(yaml.safe_load(path.read_text()))
        assert p.spec.target_ref.name
    quick = from_dict(yaml.safe_load((SAMPLES / "aviator_v1alpha1_aviatorpolicy.yaml").read_text()))
    assert quick.name == "my-app-policy"
    assert quick.spec.circuit_breaker.enabled is True


# ---------------------------------------------------------------------------- status


def test_status_to_dict_uses_api_names_and_omits_unset() -> None:
    status = AviatorPolicyStatus(
        observed_generation=3,
        active_pods=3,
        total_pods=6,
        p99_latency_ms=12.5,
        source="ebpf",
        conditions=[Condition(type="Ready", status="True", reason="Routing", message="ok")],
        pods=[
            PodStatus(name="a", ip="10.0.0.1", node="n1", state="active", p99_ms=12.5, samples=9)
        ],
        ejected_pods=["b"],
        engine_state={"breaker": {"b": {"ejections": 1}}},
    )
    d = status.to_dict()
    assert d["activePods"] == 3 and d["totalPods"] == 6 and d["p99LatencyMs"] == 12.5
    assert d["pods"] == [
        {
            "name": "a",
            "ip": "10.0.0.1",
            "node": "n1",
            "state": "active",
            "p99Ms": 12.5,
            "samples": 9,
        }
    ]
    assert d["conditions"] == [
        {"type": "Ready", "status": "True", "reason": "Routing", "message": "ok"}
    ]
    assert d["engineState"] == {"breaker": {"b": {"ejections": 1}}}
    assert "lastEvaluationTime" not in d
    assert AviatorPolicyStatus.from_dict(d) == status


def test_unreadable_status_does_not_block_the_spec() -> None:
    obj = policy()
    obj["status"] = {"activePods": "many"}
    p = from_dict(obj)
    assert p.status is None
    obj["status"] = {"activePods": 2, "engineState": {"x": [1]}}
    status = from_dict(obj).status
    assert status is not None
    assert status.engine_state == {"x": [1]}


def test_the_reconcilers_status_fits_the_model() -> None:
    """What the controller writes must be readable back through the API model."""
    from aviator.reconcilers.status import Observation, Problem, build_status, pod_status

    obs = Observation(
        generation=2,
        now_iso="2026-01-01T00:00:00Z",
        active=1,
        total=2,
        p99_ms=12.3456,
        source="ebpf",
        problems=[Problem("NoLatencyData", "1 pod has no data")],
        pods=[
            pod_status(
                "a",
                "10.0.0.1",
                "n",
                "active",
                p50_ms=1.0,
                p99_ms=12.3,
                rif=0,
                samples=5,
            ),
            pod_status("b", "10.0.0.2", "n", "ejected", reason="slow"),
        ],
        routed_service="web-aviator",
        engine_state={"v": 1},
    )
    raw = build_status(obs, {}).to_dict()
    status = AviatorPolicyStatus.from_dict(raw)
    assert status.to_dict() == raw


# ------------------------------------------------------------- defensive decoding

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["", "web", "5s", "-1s", "100ms", "topN", "prequal", "shadow", "/"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def _leaf_paths(value: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(value, dict):
        out = [prefix] if prefix else []
        for k, v in value.items():
            out.extend(_leaf_paths(v, (*prefix, k)))
        return out
    return [prefix]


_PATHS = _leaf_paths(PRODUCT_DEFAULTS)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(_PATHS), _json), min_size=1, max_size=4))
def test_decoding_any_mutation_is_a_spec_or_a_policy_error(
    mutations: list[tuple[tuple[str, ...], Any]],
) -> None:
    """Whatever an older CRD (or none) let through, the controller gets a value or a
    PolicyError naming fields under spec — never another exception."""
    spec = copy.deepcopy(PRODUCT_DEFAULTS)
    for path, value in mutations:
        node = spec
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[path[-1]] = value
    try:
        decoded = AviatorPolicySpec.from_dict(spec)
    except PolicyError as exc:
        assert exc.errors
        assert all(e.path.startswith("spec") and e.message for e in exc.errors)
        return
    assert AviatorPolicySpec.from_dict(decoded.to_dict()) == decoded


def test_prequal_load_defaults_and_validation() -> None:
    base = {"targetRef": {"name": "web"}}
    assert AviatorPolicySpec.from_dict(base).selection.prequal.load is None  # RIF alone
    spec = AviatorPolicySpec.from_dict(
        {
            **base,
            "selection": {
                "prequal": {"load": {"metric": "vllm:num_requests_waiting", "port": 8000}}
            },
        }
    )
    load = spec.selection.prequal.load
    assert load is not None
    assert (load.path, load.combine, load.weight) == ("/metrics", LoadCombine.REPLACE, 1.0)
    bad = {"metric": "bad-name", "port": 0, "path": "metrics", "combine": "max", "weight": 0}
    with pytest.raises(PolicyError) as err:
        AviatorPolicySpec.from_dict({**base, "selection": {"prequal": {"load": bad}}})
    fields = {e.path.rsplit(".", 1)[-1] for e in err.value.errors}
    assert fields == {"metric", "port", "path", "combine", "weight"}
