"""The real node's configuration: containerd (CRI on runc, OOM scores no lower than its
own), the CNI bridge range per box, and a kubelet that accepts cgroup v1."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path

from aviator.box.netns import POD_NETWORKS
from aviator.box.realnode import (
    SANDBOX_IMAGE,
    cni_conflist,
    containerd_config,
    kubelet_config,
    pod_cidr,
    socket_path,
)


def test_each_box_gets_its_own_bridge_range_outside_every_box_pod_network() -> None:
    ranges = [pod_cidr(i) for i in range(len(POD_NETWORKS))]
    assert len(set(ranges)) == len(ranges)
    for r in ranges:
        assert r.prefixlen == 16
        assert not any(r.overlaps(net) for net in POD_NETWORKS)
    assert ranges[0] == ipaddress.IPv4Network("172.16.0.0/16")


def test_containerd_config_keeps_everything_under_the_workdir(tmp_path: Path) -> None:
    doc = tomllib.loads(containerd_config(tmp_path))
    assert doc["root"].startswith(str(tmp_path))
    assert doc["grpc"]["address"] == str(socket_path(tmp_path))
    cri = doc["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == SANDBOX_IMAGE
    # runc cannot lower a process's OOM score below its parent's on such hosts.
    assert cri["restrict_oom_score_adj"] is True
    # Pods' network namespaces under the state directory, not the machine's /run/netns.
    assert cri["netns_mounts_under_state_dir"] is True
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    assert cri["cni"]["conf_dir"] == str(tmp_path / "cni")
    # runc through the script that drops what the machine cannot grant (capabilities.py).
    runc = cri["containerd"]["runtimes"]["runc"]["options"]["BinaryName"]
    assert runc == str(tmp_path / "runc")


def test_cni_and_kubelet_config(tmp_path: Path) -> None:
    net = cni_conflist(ipaddress.IPv4Network("172.17.0.0/16"), tmp_path / "ipam")
    assert [p["type"] for p in net["plugins"]] == ["bridge", "portmap", "loopback"]
    assert net["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "172.17.0.0/16"}]]
    assert net["plugins"][0]["ipam"]["dataDir"] == str(tmp_path / "ipam")
    kubelet = kubelet_config(tmp_path, "10.244.0.1", tmp_path / "ca.crt")
    assert kubelet["failCgroupV1"] is False
    assert kubelet["cgroupDriver"] == "cgroupfs"
    assert kubelet["containerRuntimeEndpoint"] == f"unix://{socket_path(tmp_path)}"
    # The API server reaches it at the node's address with a certificate of the cluster CA.
    assert kubelet["address"] == "10.244.0.1"
    assert kubelet["authentication"]["x509"]["clientCAFile"] == str(tmp_path / "ca.crt")
    assert kubelet["podLogsDir"].startswith(str(tmp_path))
