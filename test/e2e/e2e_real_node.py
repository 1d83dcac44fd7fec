"""Aviator as its users run it, on the box's real node: `aviator box up --real-node
--proxy kube-proxy --nodes 0 --no-aviator`, then `make deploy-all` (config/default:
the controller Deployment, 2 replicas with leader election, and the agent DaemonSet,
from the images `make images` built). Every pod runs on the real node in a network
namespace of its own; clients connect from inside the box to Services' ClusterIPs, so
the real kube-proxy balances every connection.

`RealNodeCluster` is the `Cluster` the scenarios (e2e_scenario.py) drive: a Service's
address is its ClusterIP (dialled in the box's network namespace), a test pod's
settings change through its `/control` endpoint, and the controller is killed by
force-deleting the leader's pod.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from e2e_cluster import REPO, Address, BoxCluster, kubectl_binary
from e2e_inbox import InBox

from aviator.box.traffic import Connector

AVIATOR_NS = "aviator-system"
LEASE = "aviator-controller"
IMAGES = ("pause", "testapp", "controller", "agent")


class RealNodeCluster(BoxCluster):
    """The box with only its real node, and Aviator deployed by `make deploy-all`."""

    def __init__(self) -> None:
        super().__init__(
            args=["--proxy", "kube-proxy", "--real-node", "--nodes", "0", "--no-aviator"]
        )
        self._in_box: InBox | None = None
        self._addresses: dict[tuple[str, str], Address] = {}

    def start(self) -> RealNodeCluster:
        super().start()
        self._in_box = InBox(int(self.status(fresh=True)["pid"]))
        return self

    def stop(self) -> None:
        if self._in_box is not None:
            self._in_box.close()
        super().stop()

    # -- deploying -------------------------------------------------------------------

    def deploy_aviator(self, timeout_s: float = 300) -> float:
        """`make deploy-all`, then wait for both rollouts; the seconds it took."""
        began = time.monotonic()
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "KUBECTL": kubectl_binary()}
        done = subprocess.run(
            ["make", "--no-print-directory", "deploy-all"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise AssertionError(f"make deploy-all failed:\n{done.stdout}\n{done.stderr}")
        for workload in ("daemonset/aviator-agent", "deployment/aviator-controller"):
            self.kubectl(
                "-n", AVIATOR_NS, "rollout", "status", workload, f"--timeout={timeout_s:.0f}s"
            )
        return time.monotonic() - began

    # -- the Cluster interface -------------------------------------------------------

    def connector(self) -> Connector | None:
        assert self._in_box is not None
        return self._in_box.connect

    def address(self, namespace: str, service: str) -> Address | None:
        """The Service's ClusterIP and first port (dialled inside the box)."""
        key = (namespace, service)
        if key not in self._addresses:
            got = self.kubectl(
                "-n", namespace, "get", "service", service, "-o", "json", check=False
            )
            if got.returncode != 0:
                return None
            spec = json.loads(got.stdout)["spec"]
            self._addresses[key] = (spec["clusterIP"], int(spec["ports"][0]["port"]))
        return self._addresses[key]

    def proxy_backends(self, namespace: str, service: str) -> int | None:
        """None: the scenarios wait out kube-proxy's sync instead (as with Kind). Its
        rules' endpoint count (`backend_count(kube_proxy=True)`) is no proof: it lags
        the slices by up to minSyncPeriod, and an earlier set of the same size (a fast
        and a slow pod, on the way to two fast ones) matches the count."""
        return None

    def set_pod_controls(self, namespace: str, pod: str, query: str | None) -> None:
        """POST /control to the pod; None: back to its environment's latency, no errors."""
        obj = self.pod(namespace, pod)
        if query is None:
            env = {e["name"]: e.get("value") for e in obj["spec"]["containers"][0].get("env", [])}
            query = f"latency={env.get('LATENCY') or '10ms'}&error_rate=0"
        port = obj["spec"]["containers"][0]["ports"][0]["containerPort"]
        self.post(obj["status"]["podIP"], int(port), f"/control?{query}")

    def controller_pid(self) -> int | None:
        return None  # the controller is a pod: see leader()

    def kill_controller(self) -> None:
        """Force-delete the leader's pod (the kubelet stops it: SIGTERM, then SIGKILL)."""
        self.kubectl(
            "-n", AVIATOR_NS, "delete", "pod", self.leader(), "--grace-period=0", "--force"
        )

    def crash_leader(self) -> str:
        """SIGKILL the leader's process (its container restarts in the same pod; the
        Lease is not released); the pod's name."""
        leader = self.leader()
        container = self.pod(AVIATOR_NS, leader)["status"]["containerStatuses"][0]
        cid = str(container["containerID"]).split("://", 1)[1]
        node = Path(self.status(fresh=True)["workdir"]) / "node"
        tasks = subprocess.run(
            ["ctr", "--address", str(node / "containerd.sock"), "-n", "k8s.io", "tasks", "ls"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        (pid,) = [line.split()[1] for line in tasks.splitlines() if line.startswith(cid)]
        os.kill(int(pid), signal.SIGKILL)
        return leader

    # -- helpers ---------------------------------------------------------------------

    def leader(self) -> str:
        """The pod holding the controller's Lease ("" while none does); the identity is
        `<hostname>-<pid>-<random>`, and a pod's hostname is its name."""
        return self.lease()[0]

    def lease(self) -> tuple[str, str]:
        """The Lease's holder pod ("" when released) and its renewTime."""
        got = self.kubectl("-n", AVIATOR_NS, "get", "lease", LEASE, "-o", "json")
        spec = json.loads(got.stdout)["spec"]
        holder = str(spec.get("holderIdentity") or "")
        return holder.rsplit("-", 2)[0] if holder else "", str(spec.get("renewTime") or "")

    def pod(self, namespace: str, name: str) -> dict[str, Any]:
        got: dict[str, Any] = json.loads(
            self.kubectl("-n", namespace, "get", "pod", name, "-o", "json").stdout
        )
        return got

    def post(self, ip: str, port: int, path: str) -> str:
        """An HTTP POST from inside the box (pods' addresses are routed there only)."""
        assert self._in_box is not None
        sock: socket.socket = self._in_box.new_socket()
        with sock:
            sock.settimeout(10)
            sock.connect((ip, port))
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: {ip}\r\nContent-Length: 0\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head = answer.split(b"\r\n", 1)[0].decode()
        if " 200 " not in head:
            raise AssertionError(f"POST {path} to {ip}:{port}: {head}")
        return answer.decode(errors="replace")

    def logs(self, namespace: str, selector: str) -> str:
        return self.kubectl(
            "-n", namespace, "logs", "-l", selector, "--tail=-1", "--prefix", check=False
        ).stdout
