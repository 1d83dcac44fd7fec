"""The clusters the e2e scenarios run against, behind one small interface.

A scenario needs: a kubeconfig (to apply manifests and read objects), a way to reach
a Service the way an in-cluster client would (a `Target`: host and port where each
new TCP connection is balanced by the cluster's Service proxy), a way to turn a test
pod slow and back, and a way to kill the controller.

- `BoxCluster`: `aviator box up` in a subprocess (the cluster in a box). Services are
  reached through the box proxy's addresses from its status file; a pod's latency is
  changed through the test app's control file.
- `KindCluster` (E2E_CLUSTER=kind): creates a Kind cluster, builds and loads the
  images, `make deploy-all`, and reaches a Service through a small relay pod
  (test/e2e/relay.py) behind `kubectl port-forward`: each forwarded connection makes
  a new connection to the Service's ClusterIP, so kube-proxy balances it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import pytest

from aviator.box.kubeproxy import unavailable as kube_proxy_unavailable
from aviator.box.process import BoxProcess
from aviator.box.realnode import unavailable as real_node_unavailable
from aviator.box.traffic import Connector

REPO = Path(__file__).resolve().parents[2]
Address = tuple[str, int]
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
# `make test` builds the node components and images, then sets this: a box that needs
# them fails instead of skipping, so the suite never passes by leaving them out.
REQUIRE_NODE = "AVIATOR_E2E_REQUIRE_NODE"


def box_unavailable() -> str | None:
    """Why the cluster in a box cannot start here, or None."""
    if os.geteuid() != 0:
        return "the cluster in a box needs root (it creates its own network namespace)"
    if shutil.which("ip") is None:
        return "the cluster in a box needs iproute2 (`ip`) to set up its network"
    for name in CONTROL_PLANE:
        if not (REPO / "bin" / name).exists():
            return f"bin/{name} is missing: run `make controlplane`"
    return None


def node_unavailable(*, real_node: bool, images: tuple[str, ...] = ()) -> str | None:
    """Why a box with the real kube-proxy (and, with `real_node`, the real node
    running `images` from bin/images) cannot start here, or None."""
    reason = box_unavailable() or kube_proxy_unavailable(REPO / "bin")
    if reason or not real_node:
        return reason
    reason = real_node_unavailable(REPO / "bin")
    if reason:
        return reason
    for image in images:
        if not (REPO / "bin" / "images" / f"{image}.tar").exists():
            return f"bin/images/{image}.tar is missing: run `make images`"
    return None


def skip_if(reason: str | None) -> None:
    """Skip saying why; fail instead where REQUIRE_NODE is set."""
    if reason is None:
        return
    if os.environ.get(REQUIRE_NODE):
        pytest.fail(f"{reason} ({REQUIRE_NODE} is set: `make test` runs the real node)")
    pytest.skip(reason)


class Cluster(Protocol):
    kubeconfig: Path

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]: ...

    def address(self, namespace: str, service: str) -> Address | None: ...

    def set_pod_latency(self, namespace: str, pod: str, latency: str | None) -> None: ...

    def set_pod_controls(self, namespace: str, pod: str, query: str | None) -> None:
        """A test-app pod's run-time settings ("latency=2s&error_rate=0.5"), or back to
        its env settings (None)."""
        ...

    def proxy_backends(self, namespace: str, service: str) -> int | None:
        """How many endpoints the Service proxy spreads new connections over, where the
        cluster can tell (the box's proxy); None where it cannot (kube-proxy in Kind)."""
        ...

    def controller_pid(self) -> int | None: ...

    def kill_controller(self) -> None: ...

    def connector(self) -> Connector | None:
        """How a client opens a connection to `address()`; None: a plain connect."""
        ...


def kubectl_binary() -> str:
    local = REPO / "bin" / "kubectl"
    return str(local) if local.exists() else (shutil.which("kubectl") or "kubectl")


def run_kubectl(
    kubeconfig: Path, *args: str, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    argv = [kubectl_binary(), "--kubeconfig", str(kubeconfig), *args]
    result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


class BoxCluster(BoxProcess):
    """`aviator box up` as a subprocess (or a box someone already runs: E2E_BOX_WORKDIR)."""

    def __init__(
        self,
        workdir: Path | None = None,
        start_timeout_s: float = 420.0,
        args: list[str] | None = None,  # more `aviator box up` options
    ) -> None:
        super().__init__(
            workdir,
            args=args,
            cwd=REPO,
            start_timeout_s=start_timeout_s,
            keep_workdir=bool(os.environ.get("E2E_KEEP_WORKDIR")),
            prefix="aviator-e2e-box-",
        )

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run_kubectl(self.kubeconfig, *args, input=input, check=check)

    def proxy_backends(self, namespace: str, service: str) -> int | None:
        return self.backend_count(namespace, service)

    def component(self, name: str) -> dict[str, Any]:
        comp: dict[str, Any] = self.status(fresh=True).get("components", {}).get(name, {})
        return comp

    def controller_pid(self) -> int | None:
        pid = self.component("controller").get("pid")
        return int(pid) if pid else None

    def connector(self) -> Connector | None:
        return None  # the box proxy's addresses are on the host's loopback

    def kill_controller(self) -> None:
        pid = self.controller_pid()
        if pid is None:
            raise AssertionError("the box runs no controller")
        os.kill(pid, signal.SIGKILL)

    def aviator_ready(self) -> str | None:
        """None when the controller and agents run; otherwise why not."""
        status = self.status(fresh=True)
        if not str(status.get("crd", "")).startswith("installed"):
            return f"AviatorPolicy CRD: {status.get('crd')}"
        needs_agents = os.environ.get("E2E_LATENCY_SOURCE", "ebpf") != "probe"
        for name, comp in status.get("components", {}).items():
            if name.startswith("agent/") and not needs_agents:
                continue
            if comp.get("state") == "not-implemented":
                return f"{name} is not implemented yet"
        return None


class KindCluster:
    """E2E_CLUSTER=kind: a Kind cluster with Aviator deployed by `make deploy-all`."""

    NAME = "aviator-e2e"
    RELAY_NAMESPACE = "aviator-e2e-relay"

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="aviator-e2e-kind-"))
        self.kubeconfig = self.workdir / "kubeconfig"
        self._forwards: dict[tuple[str, str], tuple[subprocess.Popen[bytes], int]] = {}

    @staticmethod
    def unavailable() -> str | None:
        for tool in ("docker", "kind"):
            if shutil.which(tool) is None:
                return f"E2E_CLUSTER=kind needs {tool} on PATH"
        if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
            return "E2E_CLUSTER=kind needs a running Docker engine"
        return None

    def _sh(self, *argv: str, env: dict[str, str] | None = None) -> None:
        subprocess.run(argv, check=True, cwd=REPO, env={**os.environ, **(env or {})})

    def start(self) -> KindCluster:
        self._sh(
            "kind", "create", "cluster", "--name", self.NAME, "--kubeconfig", str(self.kubeconfig)
        )
        kube = {"KUBECONFIG": str(self.kubeconfig)}
        self._sh("make", "docker-build", "IMG=aviator-controller:latest")
        self._sh("make", "docker-build-agent", "AGENT_IMG=aviator-agent:latest")
        self._sh("docker", "build", "-t", "aviator-testapp:latest", "test/functional")
        for image in (
            "aviator-controller:latest",
            "aviator-agent:latest",
            "aviator-testapp:latest",
        ):
            self._sh("kind", "load", "docker-image", image, "--name", self.NAME)
        self._sh("make", "deploy-all", env=kube)
        for workload in ("deployment/aviator-controller", "daemonset/aviator-agent"):
            self.kubectl("-n", "aviator-system", "rollout", "status", workload, "--timeout=180s")
        self.kubectl("create", "namespace", self.RELAY_NAMESPACE, check=False)
        return self

    def stop(self) -> None:
        for proc, _ in self._forwards.values():
            proc.terminate()
        subprocess.run(["kind", "delete", "cluster", "--name", self.NAME], check=False)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run_kubectl(self.kubeconfig, *args, input=input, check=check)

    def address(self, namespace: str, service: str) -> Address | None:
        key = (namespace, service)
        if key not in self._forwards:
            self._forwards[key] = self._relay(namespace, service)
        return ("127.0.0.1", self._forwards[key][1])

    def _relay(self, namespace: str, service: str) -> tuple[subprocess.Popen[bytes], int]:
        name = f"relay-{namespace}-{service}"[:63]
        script = (REPO / "test" / "e2e" / "relay.py").read_text()
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": self.RELAY_NAMESPACE},
            "spec": {
                "containers": [
                    {
                        "name": "relay",
                        "image": "aviator-testapp:latest",
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["python", "-c", script],
                        "args": [f"{service}.{namespace}.svc.cluster.local", "80", "9000"],
                        "ports": [{"containerPort": 9000}],
                    }
                ]
            },
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(pod))
        self.kubectl("-n", self.RELAY_NAMESPACE, "wait", "--for=condition=Ready", f"pod/{name}")
        port = 30000 + len(self._forwards)
        proc = subprocess.Popen(
            [
                kubectl_binary(),
                "--kubeconfig",
                str(self.kubeconfig),
                "-n",
                self.RELAY_NAMESPACE,
                "port-forward",
                f"pod/{name}",
                f"{port}:9000",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # port-forward prints no machine-readable readiness signal
        return proc, port

    def set_pod_latency(self, namespace: str, pod: str, latency: str | None) -> None:
        self.set_pod_controls(namespace, pod, f"latency={latency}" if latency else None)

    def set_pod_controls(self, namespace: str, pod: str, query: str | None) -> None:
        # HTTP/1.1 test-app pods only (POST /control); None: the image's defaults.
        query = query or "latency=10ms&error_rate=0"
        code = (
            "import urllib.request;urllib.request.urlopen(urllib.request.Request("
            f"'http://127.0.0.1:8080/control?{query}',method='POST'))"
        )
        self.kubectl("-n", namespace, "exec", pod, "--", "python", "-c", code)

    def proxy_backends(self, namespace: str, service: str) -> int | None:
        return None  # kube-proxy's rules are not visible from here

    def controller_pid(self) -> int | None:
        return None

    def connector(self) -> Connector | None:
        return None  # the relay's port-forward is on the host's loopback

    def kill_controller(self) -> None:
        self.kubectl(
            "-n",
            "aviator-system",
            "delete",
            "pod",
            "-l",
            "app.kubernetes.io/name=aviator-controller",
            "--grace-period=0",
            "--force",
        )
