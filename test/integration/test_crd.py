"""The AviatorPolicy CRD against a real kube-apiserver.

Installs the committed CRD YAML, then checks what users see: the sample policy is
accepted and read back fully defaulted (equal to the Python model's defaults), bad
specs are refused with a message naming the field (and the Python model refuses
them at the same field), `kubectl get avp` shows the status columns, and
`kubectl explain` shows the descriptions.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aviator.api import AviatorPolicySpec, PolicyError, from_dict
from aviator.api.crd import CRD_FILE_NAME, CRD_NAME, build_crd
from aviator.api.types import API_VERSION, KIND, SelectionSpec
from aviator.kube import KubeClient
from aviator.kube.resources import AVIATORPOLICIES
from aviator.testing.controlplane import ControlPlane

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "config" / "crd" / "bases" / CRD_FILE_NAME
SAMPLES = ROOT / "config" / "samples"
SAMPLE = SAMPLES / "aviator_v1alpha1_aviatorpolicy.yaml"


@pytest.fixture(scope="module")
def crd(control_plane: ControlPlane) -> ControlPlane:
    """The committed CRD YAML (what this module is about, so it overrides conftest's
    `crd`), installed once per module. `apply` is idempotent, so modules that install
    it too (it is cluster-scoped) do not get in each other's way."""
    control_plane.kubectl("apply", "-f", str(CRD_FILE))
    control_plane.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
    # Established means served; kubectl's discovery may need a moment to learn `avp`.
    deadline = time.monotonic() + 30
    while True:
        probe = control_plane.kubectl("get", "avp", "-A", check=False)
        if probe.returncode == 0 or time.monotonic() > deadline:
            assert probe.returncode == 0, probe.stderr
            return control_plane
        time.sleep(0.2)


@pytest.fixture(scope="module")
def scratch(crd: ControlPlane) -> Iterator[str]:
    """One namespace for the many validation cases (refused objects leave nothing)."""
    name = f"avp-validation-{uuid.uuid4().hex[:8]}"
    crd.kubectl("create", "namespace", name)
    yield name
    crd.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": spec,
    }


def _create(
    cp: ControlPlane, namespace: str, obj: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    return cp.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(obj), check=False)


def _get(cp: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    out = cp.kubectl("get", "avp", name, "-n", namespace, "-o", "json").stdout
    obj: dict[str, Any] = json.loads(out)
    return obj


def _wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll the API server (schema changes reach its handlers asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_crd_is_established_with_its_names_and_columns(crd: ControlPlane) -> None:
    stored = json.loads(crd.kubectl("get", "crd", CRD_NAME, "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in stored["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    assert stored["status"]["acceptedNames"]["shortNames"] == ["avp"]
    assert stored["status"]["acceptedNames"]["categories"] == ["aviator"]
    [version] = stored["spec"]["versions"]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "ACTIVE",
        "TOTAL",
        "P99ms",
        "SOURCE",
        "AGE",
    ]


def test_install_is_idempotent(crd: ControlPlane) -> None:
    again = crd.kubectl("apply", "-f", str(CRD_FILE))
    assert "unchanged" in again.stdout or "configured" in again.stdout


@pytest.mark.parametrize(
    "sample", sorted(SAMPLES.glob("aviator_v1alpha1_*.yaml")), ids=lambda p: p.stem
)
def test_sample_is_accepted_and_defaulted_like_the_model(
    crd: ControlPlane, namespace: str, sample: Path
) -> None:
    crd.kubectl("apply", "-n", namespace, "-f", str(sample))
    written = yaml.safe_load(sample.read_text())
    stored = _get(crd, namespace, written["metadata"]["name"])
    # The API server's defaulting and the model's agree on every field...
    assert stored["spec"] == AviatorPolicySpec.from_dict(written["spec"]).to_dict()
    # ...and both say what the product sheet says.
    assert from_dict(stored).spec == AviatorPolicySpec.from_dict(written["spec"])


def test_quick_start_sample_reads_back_with_product_defaults(
    crd: ControlPlane, namespace: str
) -> None:
    crd.kubectl("apply", "-n", namespace, "-f", str(SAMPLE))
    spec = _get(crd, namespace, "my-app-policy")["spec"]
    assert spec["targetRef"] == {"kind": "Service", "name": "my-app-service"}
    assert (spec["latencyThreshold"], spec["evaluationInterval"]) == ("100ms", "5s")
    assert spec["latencySource"] == "ebpf"
    assert (spec["targetPort"], spec["probePath"], spec["minEndpoints"]) == (8080, "/", 1)
    assert spec["selection"] == {
        "mode": "percentage",
        "percentage": 50,
        "topN": 3,
        "prequal": {"rifQuantile": 0.84},
    }
    assert spec["circuitBreaker"] == {
        "enabled": True,
        "p99Threshold": "500ms",
        "consecutiveViolations": 3,
        "recoveryInterval": "30s",
        "maxEjectionPercent": 50,
        "errorRateMinResponses": 20,
    }
    assert spec["dampening"] == {"enabled": True, "thresholdPercent": 20, "consecutiveIntervals": 3}
    assert spec["routing"] == {"mode": "shadow", "handoff": {"enabled": True, "period": "5s"}}


def test_minimal_policy_is_completed_by_the_server(crd: ControlPlane, namespace: str) -> None:
    result = _create(crd, namespace, _policy("minimal", {"targetRef": {"name": "web"}}))
    assert result.returncode == 0, result.stderr
    spec = _get(crd, namespace, "minimal")["spec"]
    assert spec == AviatorPolicySpec.from_dict({"targetRef": {"name": "web"}}).to_dict()
    assert spec["circuitBreaker"]["enabled"] is False
    assert spec["targetRef"]["kind"] == "Service"


# (name, change to a valid spec, field the message must name, words it must contain)
BAD_SPECS: list[tuple[str, dict[str, Any], str, str]] = [
    ("percentage-0", {"selection": {"percentage": 0}}, "spec.selection.percentage", "greater than or equal to 1"),
    ("percentage-101", {"selection": {"percentage": 101}}, "spec.selection.percentage", "less than or equal to 100"),
    ("topn-0", {"selection": {"topN": 0}}, "spec.selection.topN", "greater than or equal to 1"),
    ("malformed-duration", {"evaluationInterval": "5 seconds"}, "spec.evaluationInterval", "should match"),
    ("negative-duration", {"latencyThreshold": "-1s"}, "spec.latencyThreshold", "latencyThreshold must not be negative"),
    ("negative-recovery", {"circuitBreaker": {"recoveryInterval": "-30s"}}, "spec.circuitBreaker.recoveryInterval", "must not be negative"),
    ("interval-100ms", {"evaluationInterval": "100ms"}, "spec.evaluationInterval", "evaluationInterval must be at least 200ms"),
    ("interval-2h", {"evaluationInterval": "2h"}, "spec.evaluationInterval", "evaluationInterval must be at least 200ms and at most 1h"),
    ("threshold-0", {"latencyThreshold": "0"}, "spec.latencyThreshold", "latencyThreshold must be greater than 0"),
    ("threshold-0ms", {"latencyThreshold": "0ms"}, "spec.latencyThreshold", "latencyThreshold must be greater than 0"),
    ("threshold-huge", {"latencyThreshold": "2562047h"}, "spec.latencyThreshold", "at most 1h"),
    ("p99-0", {"circuitBreaker": {"p99Threshold": "0s"}}, "spec.circuitBreaker.p99Threshold", "p99Threshold must be greater than 0"),
    ("p99-huge", {"circuitBreaker": {"p99Threshold": "1h0m1s"}}, "spec.circuitBreaker.p99Threshold", "at most 1h"),
    ("recovery-0", {"circuitBreaker": {"recoveryInterval": "0"}}, "spec.circuitBreaker.recoveryInterval", "recoveryInterval must be greater than 0"),
    ("recovery-huge", {"circuitBreaker": {"recoveryInterval": "100h"}}, "spec.circuitBreaker.recoveryInterval", "at most 1h"),
    ("kind-deployment", {"targetRef": {"kind": "Deployment", "name": "web"}}, "spec.targetRef.kind", "targetRef.kind must be Service"),
    ("empty-name", {"targetRef": {"name": ""}}, "spec.targetRef.name", "targetRef.name must not be empty"),
    ("invalid-name", {"targetRef": {"name": "Web_1"}}, "spec.targetRef.name", "valid Service name"),
    ("unknown-mode", {"selection": {"mode": "fastest"}}, "spec.selection.mode", 'Unsupported value: "fastest"'),
    ("unknown-source", {"latencySource": "magic"}, "spec.latencySource", 'Unsupported value: "magic"'),
    ("threshold-percent-101", {"dampening": {"thresholdPercent": 101}}, "spec.dampening.thresholdPercent", "less than or equal to 100"),
    ("violations-0", {"circuitBreaker": {"consecutiveViolations": 0}}, "spec.circuitBreaker.consecutiveViolations", "greater than or equal to 1"),
    ("max-ejection-101", {"circuitBreaker": {"maxEjectionPercent": 101}}, "spec.circuitBreaker.maxEjectionPercent", "less than or equal to 100"),
    ("error-rate-0", {"circuitBreaker": {"errorRatePercent": 0}}, "spec.circuitBreaker.errorRatePercent", "greater than 0"),
    ("error-rate-101", {"circuitBreaker": {"errorRatePercent": 101}}, "spec.circuitBreaker.errorRatePercent", "less than or equal to 100"),
    ("error-responses-0", {"circuitBreaker": {"errorRateMinResponses": 0}}, "spec.circuitBreaker.errorRateMinResponses", "greater than or equal to 1"),
    ("rif-quantile-0", {"selection": {"prequal": {"rifQuantile": 0}}}, "spec.selection.prequal.rifQuantile", "greater than 0"),
    ("rif-quantile-1", {"selection": {"prequal": {"rifQuantile": 1}}}, "spec.selection.prequal.rifQuantile", "less than 1"),
    ("intervals-0", {"dampening": {"consecutiveIntervals": 0}}, "spec.dampening.consecutiveIntervals", "greater than or equal to 1"),
    ("min-endpoints-0", {"minEndpoints": 0}, "spec.minEndpoints", "greater than or equal to 1"),
    ("target-port-0", {"targetPort": 0}, "spec.targetPort", "greater than or equal to 1"),
    ("probe-path", {"probePath": "healthz"}, "spec.probePath", "probePath must start with '/'"),
    ("unknown-routing", {"routing": {"mode": "sideways"}}, "spec.routing.mode", 'Unsupported value: "sideways"'),
    ("shadow-is-target", {"routing": {"serviceName": "web"}}, "spec.routing.serviceName", "must differ from targetRef.name"),
    ("takeover-with-name", {"routing": {"mode": "takeover", "serviceName": "x"}}, "spec.routing.serviceName", "applies only to routing.mode shadow"),
    ("shadow-name-too-long", {"targetRef": {"name": "a" * 56}}, "spec.targetRef.name", "at most 55 characters"),
    ("no-target", {"targetRef": None}, "spec.targetRef", "Required value"),
]  # fmt: skip


def _merge(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in change.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.mark.parametrize(
    ("name", "change", "field", "words"), BAD_SPECS, ids=[b[0] for b in BAD_SPECS]
)
def test_bad_spec_is_refused_naming_the_field(
    crd: ControlPlane, scratch: str, name: str, change: dict[str, Any], field: str, words: str
) -> None:
    spec = _merge({"targetRef": {"name": "web"}}, change)
    result = _create(crd, scratch, _policy(name, spec))
    assert result.returncode != 0, f"accepted: {spec}"
    message = result.stderr
    assert f"{field}:" in message, message
    assert words in message, message
    # The controller's own decoder refuses the same spec at the same field.
    with pytest.raises(PolicyError) as exc:
        AviatorPolicySpec.from_dict(spec)
    assert any(e.path.startswith(field) for e in exc.value.errors), exc.value.errors


@pytest.mark.parametrize(
    "change",
    [
        {"evaluationInterval": "200ms"},
        {"evaluationInterval": "1m30s", "latencyThreshold": "1.5s"},
        {"latencyThreshold": "1ns", "circuitBreaker": {"p99Threshold": "1us"}},
        {
            "evaluationInterval": "1h",
            "latencyThreshold": "60m",
            "circuitBreaker": {"recoveryInterval": "3600s"},
        },
        {"selection": {"percentage": 100, "topN": 1}},
        {"selection": {"mode": "prequal", "prequal": {"rifQuantile": 0.999}}},
        {"dampening": {"thresholdPercent": 0}, "circuitBreaker": {"maxEjectionPercent": 0}},
        {"circuitBreaker": {"errorRatePercent": 100, "errorRateMinResponses": 1}},
        {"circuitBreaker": {"errorRatePercent": 0.5}},
        {"targetPort": 65535, "probePath": "/healthz?full=1"},
        {"targetRef": {"name": "a" * 63}, "routing": {"serviceName": "short"}},
        {"targetRef": {"name": "a" * 63}, "routing": {"mode": "takeover"}},
    ],
)
def test_edge_values_are_accepted_by_both(
    crd: ControlPlane, scratch: str, change: dict[str, Any]
) -> None:
    spec = _merge({"targetRef": {"name": "web"}}, change)
    name = f"edge-{uuid.uuid4().hex[:8]}"
    result = _create(crd, scratch, _policy(name, spec))
    assert result.returncode == 0, result.stderr
    stored = _get(crd, scratch, name)
    assert set(stored["spec"]) == set(AviatorPolicySpec.from_dict(spec).to_dict())
    # (The server keeps durations as written; the model normalises them: compare typed.)
    assert from_dict(stored).spec == AviatorPolicySpec.from_dict(spec)


def test_updates_are_validated_too(crd: ControlPlane, namespace: str) -> None:
    crd.kubectl("apply", "-n", namespace, "-f", str(SAMPLE))
    result = crd.kubectl(
        "patch", "avp", "my-app-policy", "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"selection": {"percentage": 0}}}),
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "spec.selection.percentage:" in result.stderr


def _table(cp: ControlPlane, namespace: str) -> list[list[str]]:
    out = cp.kubectl("get", "avp", "-n", namespace).stdout
    return [line.split() for line in out.splitlines()]


async def test_kubectl_get_shows_status_columns(
    crd: ControlPlane, kube: KubeClient, namespace: str
) -> None:
    crd.kubectl("apply", "-n", namespace, "-f", str(SAMPLE))
    header, row = _table(crd, namespace)
    # kubectl prints every header in capitals, so the CRD's P99ms shows as P99MS.
    assert header == ["NAME", "ACTIVE", "TOTAL", "P99MS", "SOURCE", "AGE"]
    assert [h.lower() for h in header] == "NAME ACTIVE TOTAL P99ms SOURCE AGE".lower().split()
    assert row[0] == "my-app-policy" and len(row) == 2  # no status yet: only NAME and AGE

    patch = {"status": {"activePods": 3, "totalPods": 6, "p99LatencyMs": 12.4, "source": "ebpf"}}
    await kube.patch(AVIATORPOLICIES, "my-app-policy", patch, namespace, subresource="status")
    header, row = _table(crd, namespace)
    assert row[:5] == ["my-app-policy", "3", "6", "12", "ebpf"]
    assert len(row) == 6

    wide = crd.kubectl("get", "aviator", "-n", namespace).stdout  # the category
    assert "my-app-policy" in wide


async def test_status_subresource_keeps_every_field_the_controller_writes(
    crd: ControlPlane, kube: KubeClient, namespace: str
) -> None:
    from aviator.reconcilers.status import Observation, Problem, build_status, pod_status

    crd.kubectl("apply", "-n", namespace, "-f", str(SAMPLE))
    status = build_status(
        Observation(
            generation=1,
            now_iso="2026-01-01T00:00:00Z",
            active=1,
            total=2,
            p99_ms=12.3456,
            source="ebpf",
            problems=[Problem("NoLatencyData", "pod b has no latency data yet")],
            pods=[
                pod_status(
                    "a",
                    "10.0.0.1",
                    "node-1",
                    "active",
                    p50_ms=1.5,
                    p99_ms=12.3,
                    rif=0,
                    samples=42,
                    protocol="opaque",
                    responses=40,
                    error_rate_percent=12.5,
                    oldest_open_ms=700.25,
                ),
                pod_status("b", "10.0.0.2", "node-2", "ejected", reason="p99 above 500ms"),
            ],
            routed_service="my-app-service-aviator",
            engine_state={"breaker": {"b": {"ejections": 2, "since": 1.5}}, "v": 1},
            opaque=["a"],
        ),
        {},
    ).to_dict()
    await kube.patch(
        AVIATORPOLICIES, "my-app-policy", {"status": status}, namespace, subresource="status"
    )
    stored = await kube.get(AVIATORPOLICIES, "my-app-policy", namespace)
    assert stored["status"] == status  # nothing pruned, opaque engineState intact
    decoded = from_dict(stored).status
    assert decoded is not None and decoded.to_dict() == status
    # The status subresource ignores spec changes, and the main resource ignores status.
    await kube.patch(AVIATORPOLICIES, "my-app-policy", {"status": {"activePods": 9}}, namespace)
    assert (await kube.get(AVIATORPOLICIES, "my-app-policy", namespace))["status"] == status


def test_kubectl_explain_shows_descriptions(crd: ControlPlane) -> None:
    # The OpenAPI document that explain reads is published a little after Established.
    _wait_until(
        lambda: crd.kubectl("explain", "avp.spec.selection", check=False).returncode == 0,
        "the published OpenAPI schema",
    )
    out = " ".join(crd.kubectl("explain", "avp.spec.selection").stdout.split())
    assert "How the serving pods are chosen among the eligible (ready) ones." in out
    from aviator.api.schema import fields_of

    for field in fields_of(SelectionSpec):
        assert field.info.json in out
        assert field.info.description in out, field.info.json
    assert "enum: topN, percentage, threshold, prequal" in out
    top = " ".join(crd.kubectl("explain", "avp").stdout.split())
    assert "routes a Service's traffic to its fastest pods" in top


def test_policy_stored_under_an_older_crd(crd: ControlPlane, scratch: str) -> None:
    """An older, looser CRD let an unknown selection.mode in and stored no defaults.
    Under the current CRD the object reads back defaulted, and the controller's
    decoder turns the bad value into a clear error instead of a crash."""
    loose = build_crd()
    version = loose["spec"]["versions"][0]
    version["schema"]["openAPIV3Schema"]["properties"]["spec"] = {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    sneaky = _policy("sneaky", {"targetRef": {"name": "web"}, "selection": {"mode": "fastest"}})
    bare = _policy("bare", {"targetRef": {"name": "web"}})

    def refused() -> bool:
        dry = crd.kubectl(
            "create", "-n", scratch, "--dry-run=server", "-f", "-",
            input=json.dumps(sneaky), check=False,
        )  # fmt: skip
        return dry.returncode != 0

    try:
        crd.kubectl("apply", "-f", "-", input=json.dumps(loose))
        _wait_until(lambda: _create(crd, scratch, sneaky).returncode == 0, "the loose schema")
        assert _create(crd, scratch, bare).returncode == 0
        raw_bare = _get(crd, scratch, "bare")
        assert "targetPort" not in raw_bare["spec"]  # the loose schema has no defaults
    finally:
        crd.kubectl("apply", "-f", str(CRD_FILE))
        _wait_until(refused, "the current schema")

    stored_bare = _get(crd, scratch, "bare")
    assert stored_bare["spec"]["targetPort"] == 8080  # defaulted when read
    assert from_dict(stored_bare).spec == AviatorPolicySpec.from_dict(
        {"targetRef": {"name": "web"}}
    )

    stored = _get(crd, scratch, "sneaky")
    assert stored["spec"]["selection"]["mode"] == "fastest"
    with pytest.raises(PolicyError) as exc:
        from_dict(stored)
    assert [e.path for e in exc.value.errors] == ["spec.selection.mode"]
    assert f"invalid AviatorPolicy {scratch}/sneaky: spec.selection.mode: must be one of" in str(
        exc.value
    )
