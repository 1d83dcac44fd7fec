"""The README's "Install on a real cluster" section describes the manifests exactly:
every object, capability, host path and make target it names exists, and every
capability and host path the agent really gets is named."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"


def install_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Install on a real cluster")
    return text[start : text.index("\n## ", start + 1)]


def base_rows() -> dict[str, str]:
    """`config/<base>` → the objects column of the install table."""
    rows = {}
    for line in install_section().splitlines():
        m = re.match(r"\| `config/([a-z-]+)` \| (.+) \|$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def objects_of(base: str) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((CONFIG / base / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for resource in kustomization.get("resources") or []:
        path = CONFIG / base / resource
        if path.is_dir():
            docs += objects_of(str(path.relative_to(CONFIG)))
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


KINDS = (
    "Namespace",
    "CustomResourceDefinition",
    "ServiceAccount",
    "ClusterRole",
    "Role",
    "Deployment",
    "PodDisruptionBudget",
    "Service",
    "DaemonSet",
    "PriorityClass",
    "ServiceMonitor",
    "NetworkPolicy",
)


def test_every_base_is_described_and_default_is_all_but_the_optional_ones() -> None:
    rows = base_rows()
    bases = {p.name for p in CONFIG.iterdir() if (p / "kustomization.yaml").exists()}
    assert set(rows) == bases - {"samples"}
    default = yaml.safe_load((CONFIG / "default" / "kustomization.yaml").read_text())
    included = {Path(r).name for r in default["resources"]}
    assert "all of the above except `prometheus` and `external-metrics`" in rows["default"]
    assert included == set(rows) - {"default", "prometheus", "external-metrics"}


def test_named_objects_and_kinds_exist_in_their_base() -> None:
    for base, described in base_rows().items():
        if base == "default":
            continue
        docs = objects_of(base)
        names = {d["metadata"]["name"] for d in docs}
        kinds = {d["kind"] for d in docs}
        for name in re.findall(r"`([a-z0-9]+[.-][a-z0-9.-]+)`", described):
            assert name in names, (base, name, names)
        for kind in KINDS:
            if re.search(rf"\b{kind}s?\b", described):
                assert kind in kinds, (base, kind, kinds)


def _agent() -> dict[str, Any]:
    (daemonset,) = [d for d in objects_of("agent") if d["kind"] == "DaemonSet"]
    return daemonset["spec"]["template"]["spec"]


def test_agent_capabilities_and_host_paths_match() -> None:
    described = base_rows()["agent"]
    spec = _agent()
    caps = set(spec["containers"][0]["securityContext"]["capabilities"]["add"])
    assert set(re.findall(r"CAP_([A-Z_]+)", described)) == caps
    host_paths = {v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert set(re.findall(r"`(/[a-z/]+)`", described)) == host_paths
    assert ("hostNetwork" in described) is bool(spec.get("hostNetwork"))
    assert ("hostPID" in described) is bool(spec.get("hostPID"))


def test_controller_replicas_and_make_targets_match() -> None:
    (deployment,) = [d for d in objects_of("manager") if d["kind"] == "Deployment"]
    replicas = re.search(r"\((\d+) replicas", base_rows()["manager"])
    assert replicas and int(replicas.group(1)) == deployment["spec"]["replicas"]
    makefile = (ROOT / "Makefile").read_text()
    for target in set(re.findall(r"`make ([a-z-]+)", install_section())):
        assert re.search(rf"^{target}:", makefile, re.M), target
