"""The box's KubeProxyConfiguration: nftables mode, the box's pod network as the
cluster CIDR, and host settings left alone; kube-proxy itself reads it strictly."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from aviator.box.kubeproxy import MODE, config

REPO = Path(__file__).resolve().parents[3]


def _config(tmp_path: Path) -> dict[str, object]:
    return config(tmp_path / "kubeconfig", "box-node-1", "10.244.0.0/16", 10256, 10249)


def test_config_routes_the_pod_network_in_nftables_mode(tmp_path: Path) -> None:
    doc = _config(tmp_path)
    assert doc["mode"] == MODE == "nftables"
    assert doc["clusterCIDR"] == "10.244.0.0/16"
    assert doc["hostnameOverride"] == "box-node-1"
    assert doc["healthzBindAddress"] == "127.0.0.1:10256"
    # Leaves the host's conntrack sizing and OOM score alone.
    assert doc["conntrack"] == {
        "maxPerCore": 0,
        "min": 0,
        "tcpEstablishedTimeout": "0s",
        "tcpCloseWaitTimeout": "0s",
    }
    assert doc["oomScoreAdj"] == 0


def test_kube_proxy_reads_the_config_strictly(tmp_path: Path) -> None:
    kube_proxy = REPO / "bin" / "kube-proxy"
    if not kube_proxy.exists():
        pytest.skip("bin/kube-proxy is missing: run `make node-components`")
    given = tmp_path / "in.yaml"
    given.write_text(yaml.safe_dump(_config(tmp_path)))
    out = tmp_path / "out.yaml"
    run = subprocess.run(
        [str(kube_proxy), f"--config={given}", f"--write-config-to={out}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # kube-proxy falls back to lenient decoding (and says so) on an unknown field.
    assert "strict decoding" not in run.stderr
    read = yaml.safe_load(out.read_text())
    for key, value in _config(tmp_path).items():
        if isinstance(value, dict):  # kube-proxy adds its defaults to each section
            assert {k: read[key][k] for k in value} == value, key
        else:
            assert read[key] == value, key
