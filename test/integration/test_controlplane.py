"""The local control plane starts, serves, restarts and stops without leaking anything."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from aviator.testing.controlplane import ControlPlane, ControlPlaneError, binary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

PINNED = dict(
    line.split("=", 1)
    for line in (ROOT / "hack/controlplane/versions.env").read_text().splitlines()
    if line and not line.startswith("#")
)


def _port_open(url: str) -> bool:
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


def test_binaries_report_the_pinned_versions() -> None:
    out = subprocess.run(
        [str(binary("kube-apiserver")), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == f"Kubernetes {PINNED['KUBE_VERSION']}"
    out = subprocess.run(
        [str(binary("etcd")), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert f"etcd Version: {PINNED['ETCD_VERSION'].removeprefix('v')}" in out


def test_starts_and_stops_twice_without_leaking_processes_or_ports() -> None:
    for _ in range(2):
        cp = ControlPlane()
        cp.start()
        pids, server, etcd = cp.pids(), cp.server, cp.etcd_url
        workdir = cp.workdir
        assert all(cp.running().values()) and len(pids) == 3
        version = cp.kubectl("version", "-o", "json").stdout
        assert PINNED["KUBE_VERSION"] in version
        # The controller manager runs: namespaces get their default ServiceAccount.
        cp.kubectl("create", "namespace", "leak-check")
        cp.kubectl("wait", "--for=create", "serviceaccount/default", "-n", "leak-check")
        cp.stop()
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert not _port_open(server) and not _port_open(etcd)
        assert workdir is not None and not workdir.exists()


def test_startup_failure_reports_the_component_output() -> None:
    cp = ControlPlane()
    cp.startup_timeout_s = 30
    # A bogus flag makes the real binary refuse to start: its own error must surface.
    original = cp._prepare

    def prepare_with_bad_flag() -> None:
        original()
        cp._components["kube-apiserver"].argv.append("--no-such-flag")

    cp._prepare = prepare_with_bad_flag  # type: ignore[method-assign]
    with pytest.raises(ControlPlaneError, match="unknown flag: --no-such-flag"):
        cp.start()
    assert not any(cp.running().values())


def test_restart_and_compaction(control_plane: ControlPlane) -> None:
    control_plane.kubectl("create", "configmap", "before-restart", "-n", "default")
    control_plane.restart_apiserver()
    out = control_plane.kubectl("get", "configmap", "before-restart", "-n", "default", "-o", "name")
    assert out.stdout.strip() == "configmap/before-restart"
    revision = control_plane.compact_etcd()
    assert revision > 0
