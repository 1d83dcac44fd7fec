"""Where the control-plane binaries are found: an explicit directory ($AVIATOR_BIN_DIR
or --bin-dir) only there; otherwise ./bin, then PATH. Nothing depends on where the
aviator package itself is installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from aviator.testing.controlplane import BIN_DIR_ENV, ControlPlaneError, binary


def _exe(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, no $AVIATOR_BIN_DIR, and a PATH of our own."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv(BIN_DIR_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    return work


def test_explicit_directory_is_the_only_place_looked_at(
    elsewhere: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _exe(tmp_path / "path" / "etcd")
    _exe(elsewhere / "bin" / "etcd")
    chosen = _exe(tmp_path / "chosen" / "etcd")
    assert binary("etcd", tmp_path / "chosen") == chosen
    with pytest.raises(ControlPlaneError, match="--bin-dir"):
        binary("etcd", tmp_path / "nowhere")
    monkeypatch.setenv(BIN_DIR_ENV, str(tmp_path / "chosen"))
    assert binary("etcd") == chosen


def test_local_bin_then_path(elsewhere: Path, tmp_path: Path) -> None:
    with pytest.raises(ControlPlaneError, match="make controlplane"):
        binary("kubectl")
    on_path = _exe(tmp_path / "path" / "kubectl")
    assert binary("kubectl") == on_path
    local = _exe(elsewhere / "bin" / "kubectl")
    found = binary("kubectl")
    assert found == local and found.is_absolute()
