"""The krew manifest of `kubectl aviator` (plugins/krew): hack/krew.sh fills it in
for an archive whose checksum matches, and the launcher it installs runs the plugin."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

from aviator import __version__

ROOT = Path(__file__).resolve().parents[2]


def test_manifest_and_archive(tmp_path: Path) -> None:
    subprocess.run(["bash", str(ROOT / "hack" / "krew.sh"), str(tmp_path)], check=True)
    manifest = yaml.safe_load((tmp_path / "aviator.yaml").read_text())
    archive = tmp_path / "kubectl-aviator.tar.gz"
    assert manifest["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2"
    assert manifest["kind"] == "Plugin" and manifest["metadata"]["name"] == "aviator"
    spec = manifest["spec"]
    assert spec["version"] == f"v{__version__}" and spec["shortDescription"]
    (platform,) = spec["platforms"]
    assert platform["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert platform["uri"].endswith("/kubectl-aviator.tar.gz")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "x", filter="data")
    assert platform["bin"] in names
    assert {f["from"] for f in platform["files"]} <= set(names)
    # The launcher krew puts on PATH runs the plugin of the installed package.
    launcher = tmp_path / "x" / platform["bin"]
    env = {**os.environ, "AVIATOR_PYTHON": sys.executable}
    out = subprocess.run(
        [str(launcher), "--version"], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == f"kubectl-aviator {__version__}"


def test_archive_is_reproducible(tmp_path: Path) -> None:
    for d in ("a", "b"):
        subprocess.run(["bash", str(ROOT / "hack" / "krew.sh"), str(tmp_path / d)], check=True)
    a, b = (tmp_path / d / "kubectl-aviator.tar.gz" for d in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()
