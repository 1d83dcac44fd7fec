"""One real node in the box (`aviator box up --real-node`): upstream kubelet with
Debian's containerd, runc and CNI plugins, inside the box's network namespace.

Its pods get their own network namespaces on a CNI bridge (`box-cni0`) and their
images from containerd, into which the box imports the OCI archives `make images`
built (no registry: every image is `imagePullPolicy: Never` in effect, and a manifest's
`name:tag` is tagged `docker.io/library/name:tag` as the kubelet asks for it).
The box's simulated runtime leaves the real node's pods alone (it runs only pods bound
to box nodes); a pod lands here with `spec.nodeName: REAL_NODE`, or when the box's
binder picks this node (scheduling.py: the only one with `--nodes 0`).

The API server reaches the kubelet at the node's address (`kubectl logs`, `exec`) with
a certificate of the cluster CA; container logs stay in the workdir; runc is
capabilities.py's wrapper (a container-hosted machine may lack capabilities).

Facts of a container-hosted machine the configuration answers:
- processes must not get a lower OOM score than their parent (containerd
  `restrict_oom_score_adj`; runc fails "failed to update /proc/self/oom_score_adj"
  otherwise); cgroup v1 only (`failCgroupV1: false`, cgroupfs driver);
- the node shares the box's mount namespace: `ip netns exec` would remount /sys and
  hide the cgroup mounts from kubelet and runc ("failed to find cgroup mounts");
- the box's pod network is assigned whole to its loopback, so the bridge takes a
  range of its own (POD_CIDR_BASE + the box's network index).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from aviator.box import capabilities
from aviator.box.components import Component
from aviator.testing.controlplane import ControlPlaneError, binary

REAL_NODE = "box-real-1"
POD_CIDR_BASE = ipaddress.IPv4Network("172.16.0.0/16")
CNI_BIN_DIR = Path("/usr/lib/cni")
SANDBOX_IMAGE = "localhost/pause:box"
BRIDGE = "box-cni0"
NEEDS = ("containerd", "runc", "ctr")


def pod_cidr(network_index: int) -> ipaddress.IPv4Network:
    """The real node's pod range for the box holding POD_NETWORKS[network_index]."""
    base = int(POD_CIDR_BASE.network_address) + (network_index << 16)
    return ipaddress.IPv4Network((base, 16))


def containerd_config(workdir: Path) -> str:
    """containerd 1.6 configuration (TOML, version 2), everything under workdir; runc is
    the script `runc_wrapper` writes (capabilities.py). The pods' network namespaces are
    mounted under the state directory too: in the machine's /run/netns, every box left
    its pods' namespaces behind (the box stops containerd without removing sandboxes)."""
    return "\n".join(
        [
            "version = 2",
            f'root = "{workdir / "root"}"',
            f'state = "{workdir / "state"}"',
            "[grpc]",
            f'  address = "{socket_path(workdir)}"',
            '[plugins."io.containerd.grpc.v1.cri"]',
            f'  sandbox_image = "{SANDBOX_IMAGE}"',
            "  restrict_oom_score_adj = true",
            "  netns_mounts_under_state_dir = true",
            '  [plugins."io.containerd.grpc.v1.cri".containerd]',
            '    snapshotter = "overlayfs"',
            '    default_runtime_name = "runc"',
            '    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]',
            '      runtime_type = "io.containerd.runc.v2"',
            '      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]',
            "        SystemdCgroup = false",
            f'        BinaryName = "{workdir / "runc"}"',
            '  [plugins."io.containerd.grpc.v1.cri".cni]',
            f'    bin_dir = "{CNI_BIN_DIR}"',
            f'    conf_dir = "{workdir / "cni"}"',
            "",
        ]
    )


def socket_path(workdir: Path) -> Path:
    return workdir / "containerd.sock"


def cni_conflist(cidr: ipaddress.IPv4Network, ipam_dir: Path) -> dict[str, Any]:
    """bridge + host-local + portmap + loopback, the usual minimal pod network; the
    address allocations in `ipam_dir` (host-local's default, /var/lib/cni/networks, is
    the machine's and outlives a killed box)."""
    return {
        "cniVersion": "1.0.0",
        "name": "box",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(cidr)}]],
                    "dataDir": str(ipam_dir),
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }


def kubelet_config(workdir: Path, node_ip: str, client_ca: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,  # kubelet 1.35 refuses cgroup v1 otherwise
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{socket_path(workdir)}",
        # The API server (`kubectl logs`, `exec`) presents a certificate of the cluster CA.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(client_ca)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "address": node_ip,
        # Container logs stay in the workdir (the default is the machine's /var/log/pods).
        "podLogsDir": str(workdir / "pod-logs"),
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "failSwapOn": False,
        # cadvisor cannot tell a container-hosted machine's disk: no local storage
        # accounting, and eviction only on memory.
        "localStorageCapacityIsolation": False,
        "evictionHard": {"memory.available": "100Mi"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "resolvConf": "",
    }


def mounts_under(root: Path) -> list[tuple[str, str]]:
    """(filesystem type, mount point) of this mount namespace's mounts under root."""
    fields = (line.split() for line in Path("/proc/self/mounts").read_text().splitlines())
    return [(f[2], f[1]) for f in fields if f[1].startswith(f"{root}/")]


def unavailable(bin_dir: Path | None) -> str | None:
    """Why a real node cannot run here, or None."""
    try:
        binary("kubelet", bin_dir)
    except ControlPlaneError:
        return "kubelet is missing: run `make node-components`"
    for tool in NEEDS:
        if shutil.which(tool) is None:
            return f"a real node needs `{tool}`: run `make node-components`"
    if not (CNI_BIN_DIR / "bridge").exists():
        return f"no CNI plugins in {CNI_BIN_DIR}: run `make node-components`"
    return None


class RealNode:
    """containerd + kubelet as supervised box components."""

    def __init__(
        self,
        workdir: Path,
        kubeconfig: Path,
        node_ip: str,
        cidr: ipaddress.IPv4Network,
        images: list[Path],
        bin_dir: Path | None,
        client_ca: Path,
    ) -> None:
        self.workdir = workdir / "node"
        self.images = images
        for sub in ("cni", "ipam", "root", "state", "kubelet", "pod-logs"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        (self.workdir / "containerd.toml").write_text(containerd_config(self.workdir))
        runc = self.workdir / "runc"
        runc.write_text(capabilities.wrapper(sys.executable, workdir / "logs" / "runc.log"))
        runc.chmod(0o755)
        (self.workdir / "cni" / "10-box.conflist").write_text(
            json.dumps(cni_conflist(cidr, self.workdir / "ipam"))
        )
        (self.workdir / "kubelet.yaml").write_text(
            yaml.safe_dump(kubelet_config(self.workdir, node_ip, client_ca))
        )
        logs = workdir / "logs"
        self.containerd = Component(
            "containerd",
            ["containerd", "--config", str(self.workdir / "containerd.toml")],
            logs / "containerd.log",
        )
        self.kubelet = Component(
            "kubelet",
            [
                str(binary("kubelet", bin_dir)),
                f"--config={self.workdir / 'kubelet.yaml'}",
                f"--kubeconfig={kubeconfig}",
                f"--hostname-override={REAL_NODE}",
                f"--node-ip={node_ip}",
                f"--root-dir={self.workdir / 'kubelet'}",
                "--v=2",
            ],
            logs / "kubelet.log",
        )

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(socket_path(self.workdir)), "-n", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )

    async def start(self, within_s: float = 60.0) -> None:
        # A box killed before its stop left its mounts (rootfs, network namespaces) here.
        await asyncio.to_thread(self._unmount)
        self.containerd.start()
        began = time.monotonic()
        while not socket_path(self.workdir).exists():
            if time.monotonic() - began > within_s:
                raise RuntimeError(f"containerd did not start: {self.containerd.tail(5)}")
            await asyncio.sleep(0.2)
        for archive in self.images:
            await asyncio.to_thread(self._import, archive)
        self.kubelet.start()

    def _import(self, archive: Path) -> None:
        """Import an OCI archive and tag each `name:tag` as the kubelet will ask for it."""
        out = self.ctr("images", "import", str(archive)).stdout
        for line in out.splitlines():
            # "unpacking NAME (sha256:...)...done"
            if not line.startswith("unpacking "):
                continue
            name = line.split()[1]
            if "/" not in name.split(":")[0]:
                self.ctr("images", "tag", "--force", name, f"docker.io/library/{name}")

    async def stop(self) -> None:
        """Stop the kubelet, then the pods' containers (their shims outlive containerd),
        then containerd, and unmount what the kubelet and containerd mounted."""
        await self.kubelet.stop()
        if self.containerd.pid is not None:
            await asyncio.to_thread(self._kill_tasks)
        await self.containerd.stop()
        await asyncio.to_thread(self._unmount)

    def _kill_tasks(self) -> None:
        try:
            tasks = self.ctr("tasks", "ls", "-q").stdout.split()
            for task in tasks:
                with contextlib.suppress(subprocess.CalledProcessError):
                    self.ctr("tasks", "delete", "--force", task)
        except (OSError, subprocess.SubprocessError):
            pass

    def _unmount(self) -> None:
        mounts = [target for _, target in mounts_under(self.workdir)]
        for target in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True, timeout=30)
