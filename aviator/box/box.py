"""The box: control plane + nodes + pod runtime + proxy (+ Aviator), as one object."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from aviator.box.addresses import AddressPool
from aviator.box.components import Component, aviator_argv
from aviator.box.files import CRD_FILE, config
from aviator.box.identity import (
    AGENT_SERVICE_ACCOUNT,
    AVIATOR_NAMESPACE,
    CONTROLLER_SERVICE_ACCOUNT,
    ServiceAccountTokens,
)
from aviator.box.kubeproxy import KubeProxy, read_backends
from aviator.box.kubeproxy import unavailable as kube_proxy_unavailable
from aviator.box.mirror import cancel_all
from aviator.box.netns import POD_NETWORKS, BoxNetwork
from aviator.box.nodes import BoxNodes, node_names
from aviator.box.proxy import BoxProxy, relay
from aviator.box.readiness import agents_ready, stream_ca
from aviator.box.realnode import REAL_NODE, RealNode, pod_cidr
from aviator.box.realnode import unavailable as real_node_unavailable
from aviator.box.runtime import PodRuntime
from aviator.box.state import remove_status, write_status
from aviator.kube.client import KubeClient
from aviator.testing.controlplane import ControlPlane, binary
from aviator.testing.ports import free_port

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass
class BoxOptions:
    workdir: Path
    nodes: int = 2
    zones: int = 1  # the nodes' zones, round robin (aviator/box/nodes.py)
    aviator: bool = True  # run the controller and one agent per node
    latency_source: str = "auto"
    bin_dir: Path | None = None  # control-plane binaries; None: ./bin, then PATH
    # "box": our own proxy only; "kube-proxy": also the real kube-proxy on ClusterIPs
    proxy: str = "box"
    real_node: bool = False  # also one real node (kubelet + containerd), see realnode.py
    # Register the controller as the external metrics API (config/external-metrics).
    external_metrics: bool = False


class Box:
    """Construct after `BoxNetwork.enter()`: everything the box starts lives in it."""

    def __init__(
        self, options: BoxOptions, network: BoxNetwork, progress: Progress = print
    ) -> None:
        self.options = options
        self.network = network
        self.workdir = options.workdir.resolve()
        self.progress = progress
        self.control_plane: ControlPlane | None = None
        self.client: KubeClient | None = None
        self.nodes: BoxNodes | None = None
        self.runtime: PodRuntime | None = None
        self.proxy: BoxProxy | None = None
        self.components: dict[str, Component] = {}
        self.real_node: RealNode | None = None
        self.crd: str = "not installed"
        self.controller_url = ""
        self.phase = "starting"
        self._tasks: list[asyncio.Task[None]] = []
        self._status_dirty = asyncio.Event()
        # What kube-proxy's rules spread each Service over (read off the loop, per status).
        self._kube_proxy_backends: dict[str, dict[str, int]] = {}
        self._bridge: asyncio.Server | None = None
        self.api_server = ""

    @property
    def kubeconfig(self) -> Path:
        """For users and tests in the host network: the API server through the bridge."""
        return self.workdir / "kubeconfig"

    @property
    def inner_kubeconfig(self) -> Path:
        """For what runs inside the box network (controller, agents, the box itself)."""
        assert self.control_plane is not None
        return self.control_plane.kubeconfig

    # -- start -----------------------------------------------------------------------

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for old in ("logs", "pods"):
            shutil.rmtree(self.workdir / old, ignore_errors=True)
        self._write_status()
        # A clear "run make controlplane" error before anything starts.
        for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl"):
            binary(name, self.options.bin_dir)
        if self.options.proxy == "kube-proxy":
            reason = kube_proxy_unavailable(self.options.bin_dir)
            if reason:
                raise RuntimeError(reason)
        if self.options.real_node:
            reason = real_node_unavailable(self.options.bin_dir)
            if reason:
                raise RuntimeError(reason)
        elif self.options.nodes < 1:
            raise RuntimeError("the box needs a node: --nodes 1 or more, or --real-node")
        await self._start_control_plane()
        self.client = await KubeClient.load(str(self.inner_kubeconfig))
        names = node_names(self.options.nodes)
        if names:
            self.progress(f"registering nodes {', '.join(names)}")
        self.nodes = BoxNodes(self.client, names, zones=self.options.zones)
        await self.nodes.register()
        self.runtime = PodRuntime(
            self.client,
            names,
            self.workdir / "pods",
            AddressPool(*self.network.pods.pod_range),
            probe_from=self.network.pods.node_address,
            real_nodes=(REAL_NODE,) if self.options.real_node else (),
        )
        await self.runtime.start()
        zones = sorted(set(self.nodes.zones.values())) if self.options.zones > 1 else []
        self.proxy = BoxProxy(
            self.client, self.network, on_change=self._status_dirty.set, zones=zones
        )
        await self.proxy.start()
        self._tasks = [
            asyncio.create_task(self.nodes.run(), name="node heartbeats"),
            asyncio.create_task(self._status_loop(), name="status file"),
        ]
        self.progress("pod runtime and service proxy running")
        # The real node first: without box nodes kube-proxy runs as the real node, and
        # its /healthz fails until that Node exists ("nodeEligible": false).
        if self.options.real_node:
            await self._start_real_node()
        if self.options.proxy == "kube-proxy":
            await self._start_kube_proxy(names[0] if names else REAL_NODE)
        if self.options.aviator:
            await self.start_aviator()
        self.phase = "running"
        self._write_status()

    async def _start_control_plane(self) -> None:
        # Pods in network namespaces of their own reach the API server (the `kubernetes`
        # Service) at the node's address; the box's own processes keep using loopback.
        advertise = self.network.pods.gateway.split("/")[0] if self.options.real_node else None
        cp = ControlPlane(bin_dir=self.options.bin_dir, advertise_address=advertise)
        self.control_plane = cp
        began = time.monotonic()
        self.progress("starting the control plane: etcd, kube-apiserver, kube-controller-manager")
        task = asyncio.create_task(asyncio.to_thread(cp.start))
        while not task.done():
            await asyncio.wait([task], timeout=5.0)
            if not task.done():
                self.progress(f"  ... still starting ({time.monotonic() - began:.0f}s)")
        task.result()
        await self._bridge_api_server(cp)
        self.progress(f"control plane up in {time.monotonic() - began:.1f}s")

    async def _start_kube_proxy(self, node: str) -> None:
        began = time.monotonic()
        gateway = self.network.pods.gateway.split("/")[0]
        kube_proxy = KubeProxy(
            self.workdir,
            self.inner_kubeconfig,
            node,
            str(self.network.pods.cidr),
            gateway,
            self.options.bin_dir,
        )
        self.components["kube-proxy"] = kube_proxy.component
        await kube_proxy.start()
        self.progress(
            f"kube-proxy ({kube_proxy.component.log}) synced in {time.monotonic() - began:.1f}s"
        )

    async def _start_real_node(self) -> None:
        began = time.monotonic()
        images_dir = binary("kubelet", self.options.bin_dir).parent / "images"
        images = sorted(images_dir.glob("*.tar"))
        assert self.control_plane is not None
        node = RealNode(
            self.workdir,
            self.inner_kubeconfig,
            self.network.pods.gateway.split("/")[0],
            pod_cidr(POD_NETWORKS.index(self.network.pods.cidr)),
            images,
            self.options.bin_dir,
            client_ca=self.control_plane.ca_file,
        )
        self.real_node = node
        self.components["containerd"] = node.containerd
        self.components["kubelet"] = node.kubelet
        await node.start()
        self.progress(
            f"real node started: containerd and kubelet ({len(images)} images from "
            f"{images_dir}) in {time.monotonic() - began:.1f}s"
        )

    async def _bridge_api_server(self, cp: ControlPlane) -> None:
        """Make the API server reachable from the host network on 127.0.0.1 and write
        the user's kubeconfig pointing there (same CA: the certificate names 127.0.0.1)."""
        inner = urlsplit(cp.server)
        backend = (inner.hostname or "127.0.0.1", inner.port or 443)
        sock = self.network.host_listener("127.0.0.1", 0)
        port = sock.getsockname()[1]
        self._bridge = await asyncio.start_server(lambda r, w: relay(r, w, backend), sock=sock)
        config = yaml.safe_load(cp.kubeconfig.read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = f"https://127.0.0.1:{port}"
        config["clusters"][0]["name"] = config["contexts"][0]["context"]["cluster"] = "aviator-box"
        config["contexts"][0]["name"] = config["current-context"] = "aviator-box"
        tmp = self.kubeconfig.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config))
        tmp.chmod(0o600)
        os.replace(tmp, self.kubeconfig)
        self.api_server = f"https://127.0.0.1:{port}"

    async def kubectl(self, *args: str, stdin: str | None = None) -> tuple[int, str]:
        """Run kubectl against the box; (exit code, combined output)."""
        proc = await asyncio.create_subprocess_exec(
            str(binary("kubectl", self.options.bin_dir)),
            "--kubeconfig",
            str(self.inner_kubeconfig),
            *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate(stdin.encode() if stdin is not None else None)
        return proc.returncode or 0, out.decode(errors="replace").strip()

    # -- Aviator inside the box ------------------------------------------------------

    async def start_aviator(self) -> None:
        assert self.client is not None
        if CRD_FILE.exists():
            code, out = await self.kubectl("apply", "--server-side", "-f", str(CRD_FILE))
            self.crd = "installed" if code == 0 else f"failed: {out}"
            if code == 0:
                await self.kubectl(
                    "wait", "--for=condition=Established", "--timeout=30s", "-f", str(CRD_FILE)
                )
        else:
            self.crd = f"missing ({CRD_FILE} not found)"
        self.progress(f"AviatorPolicy CRD: {self.crd}")
        # The controller and the agents run as their own ServiceAccounts under the RBAC
        # of config/rbac, exactly as in a real cluster: a missing permission shows here.
        await self._install_rbac()
        tokens = ServiceAccountTokens(self.client, self.workdir, self.inner_kubeconfig, self._tasks)
        controller_kubeconfig = await tokens.kubeconfig(CONTROLLER_SERVICE_ACCOUNT)
        agent_kubeconfig = await tokens.kubeconfig(AGENT_SERVICE_ACCOUNT)
        port = free_port()
        # TLS as in a cluster: the controller keeps its certificate in a Secret and
        # publishes its CA; agents dial 127.0.0.1 and check the Service's name.
        self.controller_url = f"wss://127.0.0.1:{port}/v1/stream"
        if self.options.external_metrics:
            await self._install_external_metrics(port)
        logs = self.workdir / "logs"
        self.components["controller"] = Component(
            "controller",
            aviator_argv(
                "controller",
                "--kubeconfig",
                str(controller_kubeconfig),
                "--namespace",
                AVIATOR_NAMESPACE,
                "--id",
                "box-controller",
                "--http-addr",
                f"127.0.0.1:{port}",
                "--agent-service-account",
                f"{AVIATOR_NAMESPACE}:{AGENT_SERVICE_ACCOUNT}",
            ),
            logs / "controller.log",
            module="aviator.controller.cmd",
        )
        self.components["controller"].start()
        ca_file = await stream_ca(
            self.client, self.workdir / "stream-ca.crt", self.components["controller"].log
        )
        assert self.nodes is not None
        agent_ports: dict[str, int] = {}
        for node in self.nodes.names:
            # The stream token is bound to the agent's Node, as a real agent's projected
            # token is bound to its pod: the controller learns the node from it.
            token_file = await tokens.node_token(AGENT_SERVICE_ACCOUNT, node)
            self.components[f"agent/{node}"] = Component(
                f"agent/{node}",
                aviator_argv(
                    "agent",
                    "--node",
                    node,
                    "--kubeconfig",
                    str(agent_kubeconfig),
                    "--controller-url",
                    self.controller_url,
                    "--controller-ca",
                    str(ca_file),
                    "--token-file",
                    str(token_file),
                    "--http-addr",
                    f"127.0.0.1:{agent_ports.setdefault(node, free_port())}",
                    "--latency-source",
                    self.options.latency_source,
                    # Box pods live in the box's network namespace; another box on the
                    # same kernel reuses the same pod IPs in its own.
                    "--handoff-netns",
                    "own",
                    # The kubelet-like prober's address: its requests are probes.
                    "--node-address",
                    self.network.pods.node_address,
                ),
                logs / f"agent-{node}.log",
                module="aviator.agent.cmd",
            )
        for name, comp in self.components.items():
            if name.startswith("agent/"):
                comp.start()
        self._tasks.append(asyncio.create_task(self._report_components()))
        self.progress(
            f"started the controller ({self.controller_url}) and {len(self.nodes.names)} agents"
        )
        took = await agents_ready(agent_ports, lambda node: self.components[f"agent/{node}"].log)
        self.progress(f"agents ready in {took:.1f}s")

    async def _report_components(self) -> None:
        """Say when a component changes state (not implemented, crashed, restarted)."""
        seen: dict[str, str] = {}
        while True:
            for name, comp in self.components.items():
                if comp.state == seen.get(name) or comp.state == "starting":
                    continue
                seen[name] = comp.state
                if comp.state == "not-implemented":
                    command = "aviator " + name.split("/")[0]
                    detail = f"`{command}` is not implemented yet in this build; the box runs on"
                elif comp.state == "restarting":
                    detail = f"exited with {comp.last_exit}: {comp.tail(1)[-200:]} (log {comp.log})"
                else:
                    detail = f"pid {comp.pid}, restarts {comp.restarts}, log {comp.log}"
                self.progress(f"{name}: {comp.state} ({detail})")
                self._status_dirty.set()
            await asyncio.sleep(0.5)

    async def _install_rbac(self) -> None:
        for base in ("namespace", "rbac"):
            code, out = await self.kubectl("apply", "-k", str(config(base)))
            if code != 0:
                raise RuntimeError(f"kubectl apply -k config/{base} failed: {out}")

    async def _install_external_metrics(self, port: int) -> None:
        """config/external-metrics, its APIService routed to the controller's port on
        the box's loopback through an ExternalName Service (the box runs the controller
        as a process, not behind a ClusterIP); before the controller starts, so it finds
        both (it reads the front proxy's settings and sets the caBundle at start)."""
        apiservice = yaml.safe_load(config("external-metrics", "apiservice.yaml").read_text())
        target = apiservice["spec"]["service"]
        target.update(namespace=AVIATOR_NAMESPACE, port=port)
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": target["name"], "namespace": AVIATOR_NAMESPACE},
            "spec": {"type": "ExternalName", "externalName": "127.0.0.1"},
        }
        code, out = await self.kubectl("apply", "-f", str(config("external-metrics", "rbac.yaml")))
        if code == 0:
            code, out = await self.kubectl(
                "apply",
                "-f",
                "-",
                stdin=json.dumps(
                    {"kind": "List", "apiVersion": "v1", "items": [service, apiservice]}
                ),
            )
        if code != 0:
            raise RuntimeError(f"installing config/external-metrics failed: {out}")
        self.progress(
            "external metrics API: registered (APIService v1beta1.external.metrics.k8s.io)"
        )

    # -- status ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        cp = self.control_plane
        return {
            "pid": os.getpid(),
            "phase": self.phase,
            "workdir": str(self.workdir),
            "kubeconfig": str(self.kubeconfig),
            "server": self.api_server or None,
            "controlplane": {
                "pids": cp.pids() if cp else [],
                "workdir": str(cp.workdir) if cp else None,
            },
            "nodes": self.nodes.names if self.nodes else [],
            "pod_network": str(self.network.pods.cidr),
            "services": self.proxy.table() if self.proxy else {},
            "proxy": self.options.proxy,
            "backends": self.proxy.backend_counts() if self.proxy else {},
            "zone_services": self.proxy.zone_table() if self.proxy else {},
            "zone_backends": self.proxy.zone_backend_counts() if self.proxy else {},
            "kube_proxy_backends": self._kube_proxy_backends,
            "pods": self.runtime.pod_ips() if self.runtime else {},
            "pod_pids": self.runtime.pids() if self.runtime else [],
            "crd": self.crd,
            "controller_url": self.controller_url,
            "components": {n: c.describe() for n, c in self.components.items()},
            "updated": time.time(),
        }

    def _write_status(self) -> None:
        with contextlib.suppress(OSError):
            write_status(self.workdir, self.status())

    async def _status_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._status_dirty.wait(), timeout=1.0)
            self._status_dirty.clear()
            if "kube-proxy" in self.components:
                self._kube_proxy_backends = await asyncio.to_thread(read_backends)
            self._write_status()

    # -- stop ------------------------------------------------------------------------

    async def stop(self) -> None:
        self.phase = "stopping"
        self._write_status()
        self.progress("stopping: Aviator, pods, proxy, control plane")
        real = {"containerd", "kubelet"} if self.real_node is not None else set()
        await asyncio.gather(*(c.stop() for n, c in self.components.items() if n not in real))
        if self.real_node is not None:
            await self.real_node.stop()
        await cancel_all(self._tasks)
        if self.runtime is not None:
            await self.runtime.stop()
        if self.proxy is not None:
            await self.proxy.stop()
        if self.client is not None:
            await self.client.close()
        if self._bridge is not None:
            self._bridge.close()
        if self.control_plane is not None:
            await asyncio.to_thread(self.control_plane.stop)
        remove_status(self.workdir)
        self.progress("box stopped")
