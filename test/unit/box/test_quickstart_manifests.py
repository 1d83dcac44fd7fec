"""The quick-start manifests say what the product sheet says they do, and the box reads
the very files of the repository (one copy, shipped inside the package)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from aviator.box import files
from aviator.box.files import SAMPLE_POLICY, quickstart

ROOT = Path(__file__).resolve().parents[3]


def _load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(quickstart(name).read_text())
    return doc


def test_the_box_reads_the_repository_files() -> None:
    """The product's quick-start paths (test/functional/, config/) are the files the box
    applies and runs: no copies to drift apart."""
    shipped = {
        files.TESTAPP: "test/functional/testapp.py",
        files.SERVICE_MANIFEST: "test/functional/test-svc.yaml",
        files.SAMPLE_POLICY: "config/samples/aviator_v1alpha1_aviatorpolicy.yaml",
        files.CRD_FILE: "config/crd/bases/aviator.example.com_aviatorpolicies.yaml",
        files.config("rbac"): "config/rbac",
        files.config("namespace"): "config/namespace",
        **{path: f"test/functional/{path.name}" for path in files.APP_MANIFESTS},
    }
    for path, in_repo in shipped.items():
        assert path.samefile(ROOT / in_repo), (path, in_repo)


@pytest.mark.parametrize(
    ("name", "latency"), [("fast-app.yaml", "10ms"), ("slow-app.yaml", "500ms")]
)
def test_apps(name: str, latency: str) -> None:
    deployment = _load(name)
    assert deployment["kind"] == "Deployment" and deployment["spec"]["replicas"] == 2
    template = deployment["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert labels["app"] == "my-app" and labels["version"] in ("fast", "slow")
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    (container,) = template["spec"]["containers"]
    assert container["image"] == "aviator-testapp:latest"
    assert container["imagePullPolicy"] == "IfNotPresent"  # kind-loaded images
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LATENCY"] == latency
    assert container["ports"] == [{"name": "http", "containerPort": 8080}]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_service_selects_both_apps_and_the_sample_targets_it() -> None:
    service = _load("test-svc.yaml")
    assert service["metadata"]["name"] == "my-app-service"
    assert service["spec"]["selector"] == {"app": "my-app"}
    (port,) = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (80, 8080)
    policy = yaml.safe_load(SAMPLE_POLICY.read_text())
    assert policy["spec"]["targetRef"]["name"] == "my-app-service"
