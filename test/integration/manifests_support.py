"""Rendering the three ways Aviator installs (kustomize config/, the Helm chart,
dist/install.yaml) into comparable objects. Tools come from bin/ (`make controlplane`
for kubectl, `make tools` for helm)."""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from aviator.testing.controlplane import binary

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "aviator"
JSON = dict[str, Any]
Key = tuple[str, str, str, str]  # apiVersion, kind, namespace, name

RECOMMENDED = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
)
# What only says which tool installed an object: Helm's bookkeeping, and managed-by
# (Helm, kustomize). Everything else must be equal.
INSTALLER_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")
INSTALLER_ANNOTATIONS = ("helm.sh/resource-policy",)


def helm() -> str:
    path = ROOT / "bin" / "helm"
    if not path.exists():
        pytest.fail("bin/helm is missing: run `make tools`")
    return str(path)


def run(argv: list[str], env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )
    assert result.returncode == 0, f"{' '.join(argv)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def kustomize(base: str | Path) -> str:
    return run([str(binary("kubectl")), "kustomize", str(ROOT / "config" / base)])


def helm_template(*args: str, release: str = "aviator") -> str:
    return run([helm(), "template", release, str(CHART), *args])


def objects(text: str) -> dict[Key, JSON]:
    out: dict[Key, JSON] = {}
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        meta = doc["metadata"]
        key = (doc["apiVersion"], doc["kind"], meta.get("namespace", ""), meta["name"])
        assert key not in out, f"{key} rendered twice"
        out[key] = doc
    return out


def normalised(obj: JSON) -> JSON:
    """The object without what only says which tool installed it."""
    obj = copy.deepcopy(obj)
    meta = obj["metadata"]
    for field, drop in (("labels", INSTALLER_LABELS), ("annotations", INSTALLER_ANNOTATIONS)):
        values = meta.get(field) or {}
        for k in drop:
            values.pop(k, None)
        if not values:
            meta.pop(field, None)
    return obj


def differences(a: dict[Key, JSON], b: dict[Key, JSON]) -> list[str]:
    """Human-readable differences between two renderings (empty when equal)."""
    out = [f"only in the first: {k}" for k in sorted(set(a) - set(b))]
    out += [f"only in the second: {k}" for k in sorted(set(b) - set(a))]
    for key in sorted(set(a) & set(b)):
        x, y = normalised(a[key]), normalised(b[key])
        if x != y:
            out.append(f"{key} differs:\n{yaml.safe_dump(x)}\n--- versus ---\n{yaml.safe_dump(y)}")
    return out


def unlabelled(rendered: dict[Key, JSON]) -> list[str]:
    """Objects missing one of the recommended labels."""
    missing = []
    for key, obj in rendered.items():
        labels = obj["metadata"].get("labels") or {}
        lacking = [label for label in RECOMMENDED if not labels.get(label)]
        if lacking:
            missing.append(f"{key}: {lacking}")
    return missing
