"""The canary and autoscaling samples (config/samples/canary_*.yaml,
autoscaling_*.yaml) against the published CRD schemas of the projects that read them:
Argo Rollouts' AnalysisTemplate and Rollout, Flagger's MetricTemplate and Canary, KEDA's
ScaledObject, vendored unchanged in test/data/crds/ (each with its licence and source).
The CRDs are applied to the real API server and every sample is applied with a
server-side dry run and strict field validation, so a field the schema does not know, a
wrong type or a missing required field fails; a broken copy of each sample shows it."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from integration_support import wait_listable
from manifests_support import ROOT

from aviator.testing.controlplane import ControlPlane

pytestmark = pytest.mark.integration

JSON = dict[str, Any]
SAMPLES = ROOT / "config" / "samples"
CRDS = ROOT / "test" / "data" / "crds"
CRD_NAMES = {
    "analysistemplates.argoproj.io": CRDS / "argo-rollouts" / "analysistemplates.argoproj.io.yaml",
    "rollouts.argoproj.io": CRDS / "argo-rollouts" / "rollouts.argoproj.io.yaml",
    "canaries.flagger.app": CRDS / "flagger" / "canaries-metrictemplates.flagger.app.yaml",
    "metrictemplates.flagger.app": CRDS / "flagger" / "canaries-metrictemplates.flagger.app.yaml",
    "scaledobjects.keda.sh": CRDS / "keda" / "scaledobjects.keda.sh.yaml",
}
SAMPLE_FILES = sorted([*SAMPLES.glob("canary_*.yaml"), *SAMPLES.glob("autoscaling_*.yaml")])


def documents(path: Path) -> list[JSON]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def foreign_crds(control_plane: ControlPlane) -> ControlPlane:
    for path in sorted(set(CRD_NAMES.values())):
        # server-side: the AnalysisTemplate CRD is too large for the client-side
        # last-applied annotation
        control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    for name in CRD_NAMES:
        control_plane.kubectl(
            "wait", "--for=condition=Established", f"crd/{name}", "--timeout=120s", timeout=150
        )
        wait_listable(control_plane, name)
    return control_plane


def dry_run(cp: ControlPlane, namespace: str, doc: JSON) -> tuple[int, str]:
    doc = copy.deepcopy(doc)
    doc["metadata"]["namespace"] = namespace
    done = cp.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--validate=strict",
        "--field-manager=aviator-samples-test",
        "-f",
        "-",
        input=json.dumps(doc),
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def test_the_samples_are_there() -> None:
    kinds = sorted(d["kind"] for p in SAMPLE_FILES for d in documents(p))
    assert kinds == [
        "AnalysisTemplate",
        "Canary",
        "MetricTemplate",
        "MetricTemplate",
        "Rollout",
        "ScaledObject",
    ]
    for path in sorted(set(CRD_NAMES.values())):
        text = path.read_text()
        assert text.startswith("# Vendored unchanged from the Go module "), path
        assert (path.parent / "LICENSE").read_text().lstrip().startswith("Apache License")


def _of_kind(kind: str) -> list[JSON]:
    return [d for p in SAMPLE_FILES for d in documents(p) if d["kind"] == kind]


def test_the_samples_refer_to_each_other() -> None:
    """The Rollout names the AnalysisTemplate and gives every argument it has no default
    for; the Flagger Canary names the MetricTemplates."""
    (template,) = _of_kind("AnalysisTemplate")
    required = {a["name"] for a in template["spec"]["args"] if "value" not in a}
    (rollout,) = _of_kind("Rollout")
    steps = [
        s["analysis"] for s in rollout["spec"]["strategy"]["canary"]["steps"] if "analysis" in s
    ]
    assert steps
    for step in steps:
        assert [t["templateName"] for t in step["templates"]] == [template["metadata"]["name"]]
        given = {a["name"]: a for a in step["args"]}
        assert required <= set(given), required - set(given)
        assert given["canary-hash"]["valueFrom"] == {"podTemplateHashValue": "Latest"}
        assert given["stable-hash"]["valueFrom"] == {"podTemplateHashValue": "Stable"}
    (canary,) = _of_kind("Canary")
    names = {m["metadata"]["name"] for m in _of_kind("MetricTemplate")}
    used = {m["templateRef"]["name"] for m in canary["spec"]["analysis"]["metrics"]}
    assert used == names


@pytest.mark.parametrize("sample", SAMPLE_FILES, ids=lambda p: p.stem)
def test_sample_passes_its_crd_schema(
    foreign_crds: ControlPlane, namespace: str, sample: Path
) -> None:
    for doc in documents(sample):
        code, out = dry_run(foreign_crds, namespace, doc)
        assert code == 0, out
        assert "(server dry run)" in out, out


def _argo_typo(doc: JSON) -> None:
    metric = doc["spec"]["metrics"][0]
    metric["successConditon"] = metric.pop("successCondition")


def _argo_query_type(doc: JSON) -> None:
    doc["spec"]["metrics"][0]["provider"]["prometheus"]["query"] = 42


def _rollout_hash(doc: JSON) -> None:
    arg = doc["spec"]["strategy"]["canary"]["steps"][1]["analysis"]["args"][2]
    arg["valueFrom"] = {"podTemplateHash": "Latest"}


def _flagger_provider(doc: JSON) -> None:
    doc["spec"]["provider"]["type"] = "prometheos"


def _flagger_threshold(doc: JSON) -> None:
    doc["spec"]["analysis"]["metrics"][0]["thresholdRange"]["max"] = "ten percent"


def _keda_metadata(doc: JSON) -> None:
    del doc["spec"]["triggers"][0]["metadata"]


BROKEN: list[tuple[str, str, Callable[[JSON], None], str]] = [
    (
        "AnalysisTemplate",
        "typo",
        _argo_typo,
        ".spec.metrics[0].successConditon: field not declared in schema",
    ),
    ("AnalysisTemplate", "type", _argo_query_type, "spec.metrics[0].provider.prometheus.query"),
    ("Rollout", "typo", _rollout_hash, "podTemplateHash: field not declared in schema"),
    ("MetricTemplate", "enum", _flagger_provider, 'Unsupported value: "prometheos"'),
    ("Canary", "type", _flagger_threshold, "thresholdRange.max"),
    ("ScaledObject", "required", _keda_metadata, "spec.triggers[0].metadata: Required value"),
]


@pytest.mark.parametrize(
    ("kind", "why", "breaks", "error"), BROKEN, ids=[f"{k}-{w}" for k, w, _, _ in BROKEN]
)
def test_a_broken_sample_fails_the_schema(
    foreign_crds: ControlPlane,
    namespace: str,
    kind: str,
    why: str,
    breaks: Callable[[JSON], None],
    error: str,
) -> None:
    doc = _of_kind(kind)[0]
    broken = copy.deepcopy(doc)
    breaks(broken)
    code, out = dry_run(foreign_crds, namespace, broken)
    assert code != 0 and error in out, out
