"""The generated CRD: current on disk, described, defaulted, bounded, printable."""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aviator.api import AviatorPolicySpec, cmd
from aviator.api.crd import CRD_FILE_NAME, build_crd, render_crd
from aviator.api.durations import DURATION_PATTERN

ROOT = Path(__file__).resolve().parents[3]
CRD_FILE = ROOT / "config" / "crd" / "bases" / CRD_FILE_NAME


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return build_crd()


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    openapi: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return openapi


def spec_prop(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node: dict[str, Any] = schema["properties"]["spec"]
    for part in path.split("."):
        node = node["properties"][part]
    return node


def test_committed_yaml_is_current() -> None:
    assert CRD_FILE.read_text(encoding="utf-8") == render_crd(), (
        f"{CRD_FILE.relative_to(ROOT)} is stale: run `make manifests`"
    )


def test_rendering_is_deterministic_and_parses_back(crd: dict[str, Any]) -> None:
    assert render_crd() == render_crd()
    assert yaml.safe_load(render_crd()) == crd


def test_identity(crd: dict[str, Any]) -> None:
    # Literals, not aviator.api.types: these pin the documented API identity.
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "aviatorpolicies.aviator.example.com"
    assert spec["group"] == "aviator.example.com"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "AviatorPolicy",
        "listKind": "AviatorPolicyList",
        "plural": "aviatorpolicies",
        "singular": "aviatorpolicy",
        "shortNames": ["avp"],
        "categories": ["aviator"],
    }
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns_are_exactly_the_product_ones(crd: dict[str, Any]) -> None:
    columns = [
        (c["name"], c["type"], c["jsonPath"])
        for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]
    ]
    assert columns == [
        ("ACTIVE", "integer", ".status.activePods"),
        ("TOTAL", "integer", ".status.totalPods"),
        ("P99ms", "integer", ".status.p99LatencyMs"),
        ("SOURCE", "string", ".status.source"),
        ("AGE", "date", ".metadata.creationTimestamp"),
    ]


def _walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, child in node.get("properties", {}).items():
        yield f"{path}.{name}", child
        yield from _walk(child, f"{path}.{name}")
    if "items" in node:
        yield f"{path}[]", node["items"]
        yield from _walk(node["items"], f"{path}[]")


def test_every_property_has_a_description(schema: dict[str, Any]) -> None:
    missing = [
        path
        for path, node in _walk(schema, "")
        if path != ".metadata" and not node.get("description", "").strip()
    ]
    assert missing == []
    assert len(list(_walk(schema, ""))) > 50


def _apply_defaults(node: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the API server does it (absent → default, recurse)."""
    if not isinstance(value, dict) or "properties" not in node:
        return value
    out = dict(value)
    for name, child in node["properties"].items():
        if name not in out and "default" in child:
            out[name] = copy.deepcopy(child["default"])
        if name in out:
            out[name] = _apply_defaults(child, out[name])
    return out


def test_schema_defaults_equal_the_model_defaults(schema: dict[str, Any]) -> None:
    minimal = {"targetRef": {"name": "web"}}
    by_schema = _apply_defaults(schema["properties"]["spec"], minimal)
    assert by_schema == AviatorPolicySpec.from_dict(minimal).to_dict()
    assert by_schema["selection"]["prequal"] == {"rifQuantile": 0.84}


@pytest.mark.parametrize(
    ("path", "bounds"),
    [
        ("selection.percentage", {"minimum": 1, "maximum": 100}),
        ("selection.topN", {"minimum": 1}),
        ("dampening.thresholdPercent", {"minimum": 0, "maximum": 100}),
        ("dampening.consecutiveIntervals", {"minimum": 1}),
        ("circuitBreaker.consecutiveViolations", {"minimum": 1}),
        ("circuitBreaker.maxEjectionPercent", {"minimum": 0, "maximum": 100}),
        ("minEndpoints", {"minimum": 1}),
        ("targetPort", {"minimum": 1, "maximum": 65535}),
        (
            "selection.prequal.rifQuantile",
            {"minimum": 0, "maximum": 1, "exclusiveMinimum": True, "exclusiveMaximum": True},
        ),
    ],
)
def test_bounds(schema: dict[str, Any], path: str, bounds: dict[str, Any]) -> None:
    node = spec_prop(schema, path)
    assert {k: node.get(k) for k in bounds} == bounds
    for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if k not in bounds:
            assert k not in node


@pytest.mark.parametrize(
    ("path", "values"),
    [
        ("selection.mode", ["topN", "percentage", "threshold", "prequal"]),
        ("latencySource", ["ebpf", "probe"]),
        ("routing.mode", ["shadow", "takeover"]),
    ],
)
def test_enums(schema: dict[str, Any], path: str, values: list[str]) -> None:
    assert spec_prop(schema, path)["enum"] == values


DURATIONS = [
    "latencyThreshold",
    "evaluationInterval",
    "circuitBreaker.p99Threshold",
    "circuitBreaker.recoveryInterval",
]


@pytest.mark.parametrize("path", DURATIONS)
def test_durations_have_pattern_and_sign_rule(schema: dict[str, Any], path: str) -> None:
    node = spec_prop(schema, path)
    assert node["type"] == "string"
    assert node["pattern"] == DURATION_PATTERN
    rules = {r["rule"]: r["message"] for r in node["x-kubernetes-validations"]}
    assert rules["!self.startsWith('-')"] == f"{path} must not be negative"


def test_cel_rules(schema: dict[str, Any]) -> None:
    def rules(path: str) -> list[dict[str, str]]:
        node = spec_prop(schema, path) if path else schema["properties"]["spec"]
        found: list[dict[str, str]] = node.get("x-kubernetes-validations", [])
        return found

    interval = [r for r in rules("evaluationInterval") if "duration(" in r["rule"]]
    assert len(interval) == 1
    assert "duration(self) >= duration('200ms')" in interval[0]["rule"]
    assert "duration(self) <= duration('1h')" in interval[0]["rule"]
    assert interval[0]["message"] == "evaluationInterval must be at least 200ms and at most 1h"
    for path in ("latencyThreshold", "circuitBreaker.p99Threshold"):
        (bounds,) = [r for r in rules(path) if "duration(" in r["rule"]]
        assert "duration(self) > duration('0s')" in bounds["rule"]
        assert bounds["message"] == f"{path} must be greater than 0 and at most 1h"
    assert {"rule": "self == 'Service'", "message": "targetRef.kind must be Service"} in rules(
        "targetRef.kind"
    )
    assert {"rule": "size(self) > 0", "message": "targetRef.name must not be empty"} in rules(
        "targetRef.name"
    )
    assert any(r["rule"] == "self.startsWith('/')" for r in rules("probePath"))
    cross = rules("")
    assert {r["fieldPath"] for r in cross} == {".routing.serviceName", ".targetRef.name"}
    # Every message names the field it is about.
    for path, node in _walk(schema["properties"]["spec"], ""):
        for r in node.get("x-kubernetes-validations", []):
            leaf = (r.get("fieldPath") or path).rsplit(".", 1)[-1]
            assert leaf in r["message"], (path, r)


def test_required(schema: dict[str, Any]) -> None:
    assert schema["required"] == ["spec"]
    assert schema["properties"]["spec"]["required"] == ["targetRef"]
    assert spec_prop(schema, "targetRef")["required"] == ["name"]


def test_status_schema(schema: dict[str, Any]) -> None:
    status = schema["properties"]["status"]
    assert set(status["properties"]) == {
        "activePods",
        "totalPods",
        "p99LatencyMs",
        "source",
        "serviceName",
        "conditions",
        "pods",
        "ejectedPods",
        "handOffs",
        "zones",
        "observedGeneration",
        "lastEvaluationTime",
        "engineState",
        "takeover",
    }
    takeover = status["properties"]["takeover"]
    assert takeover["required"] == ["generation", "originalSelector", "phase", "service"]
    assert takeover["properties"]["phase"]["enum"] == ["Pending", "TakenOver", "Restored"]
    assert status["properties"]["engineState"]["x-kubernetes-preserve-unknown-fields"] is True
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["properties"]) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }
    assert set(status["properties"]["pods"]["items"]["properties"]) == {
        "name",
        "ip",
        "node",
        "p50Ms",
        "p99Ms",
        "rif",
        "load",
        "samples",
        "state",
        "reason",
        "protocol",
        "responses",
        "errorRatePercent",
        "oldestOpenMs",
        "keepWarmSamples",
        "probeSamples",
        "probeP50Ms",
        "probeP99Ms",
    }
    # Status is written by the controller only: no defaults to surprise it.
    assert not [p for p, n in _walk(status, "") if "default" in n]


# ------------------------------------------------------------------ `aviator manifests`


def run_manifests(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    return cmd.run(parser.parse_args(list(argv)))


def test_manifests_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_manifests() == 0
    assert capsys.readouterr().out == render_crd()


def test_manifests_write_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "crd" / "x.yaml"
    assert run_manifests("--output", str(out), "--check") == 1
    assert not out.exists()
    assert run_manifests("--output", str(out)) == 0
    assert out.read_text(encoding="utf-8") == render_crd()
    assert run_manifests("--output", str(out), "--check") == 0
    out.write_text(render_crd().replace("default: 50", "default: 51"), encoding="utf-8")
    assert run_manifests("--output", str(out), "--check") == 1
    assert "stale" in capsys.readouterr().err
    assert run_manifests("--check") == 2
