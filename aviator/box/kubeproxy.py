"""The real kube-proxy in the box (`aviator box up --proxy kube-proxy`).

Upstream `kube-proxy` (built by `make node-components`, same Kubernetes version as the
control plane) runs inside the box's network namespace in **nftables** mode and routes
every Service's real ClusterIP (SERVICE_CIDR) to the endpoints of its EndpointSlices,
whoever writes them: this is how Aviator's slices take effect in a cluster, without
our own reading of the slices in between. nftables rather than iptables: it is the
mode upstream develops (GA since 1.33), it needs only Debian's `nft` (no legacy or
iptables-nft shim to choose between), and its rules sit in one table of their own
(`nft list table ip kube-proxy`), which the namespace takes with it when the box ends.

One kube-proxy serves the whole box, as box nodes share one network namespace: it runs
as the first box node (`hostnameOverride`), which matters only for topology hints
(every box node is in one zone). Connections to ClusterIPs work from inside the box
namespace only; the box's own proxy (aviator/box/proxy.py) keeps giving each Service
an address on the host's loopback for clients outside it (the demo, a user's shell).

The box namespace has no route but its pod network; a route for SERVICE_CIDR through
the loopback device lets a socket connect to a ClusterIP, which kube-proxy's
output-hook DNAT then sends to a pod address (all local in the box).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from aviator.box.components import Component
from aviator.testing.controlplane import SERVICE_CIDR, ControlPlaneError, binary
from aviator.testing.ports import free_port

MODE = "nftables"
NEEDS = ("nft",)  # what kube-proxy execs in nftables mode (Debian package `nftables`)


def config(
    kubeconfig: Path, node: str, cluster_cidr: str, healthz_port: int, metrics_port: int
) -> dict[str, Any]:
    """The KubeProxyConfiguration for the box (pure)."""
    zero = "0s"
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": MODE,
        "hostnameOverride": node,
        "clusterCIDR": cluster_cidr,
        "detectLocalMode": "ClusterCIDR",
        "nodePortAddresses": ["primary"],
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        # The box is a process, not a machine: keep the host's OOM score and conntrack
        # table size (nf_conntrack_max is not writable from a non-initial namespace).
        "oomScoreAdj": 0,
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": zero,
            "tcpCloseWaitTimeout": zero,
        },
    }


def unavailable(bin_dir: Path | None) -> str | None:
    """Why kube-proxy cannot run here, or None."""
    try:
        binary("kube-proxy", bin_dir)
    except ControlPlaneError:
        return "kube-proxy is missing: run `make node-components` (it builds it into bin/)"
    for tool in NEEDS:
        if shutil.which(tool) is None:
            return f"kube-proxy's {MODE} mode needs `{tool}` (Debian package nftables)"
    return None


def route_services(gateway_ip: str) -> None:
    """Let sockets in the box reach SERVICE_CIDR (see the module docstring)."""
    subprocess.run(
        ["ip", "route", "replace", SERVICE_CIDR, "dev", "lo", "src", gateway_ip],
        check=True,
        capture_output=True,
        text=True,
    )


class KubeProxy:
    """kube-proxy as a supervised box component; `start()` returns once it has synced
    its rules once (its /healthz answers 200)."""

    def __init__(
        self,
        workdir: Path,
        kubeconfig: Path,
        node: str,
        cluster_cidr: str,
        gateway_ip: str,
        bin_dir: Path | None,
    ) -> None:
        self.healthz_port = free_port()
        self.gateway_ip = gateway_ip
        path = workdir / "kube-proxy.yaml"
        path.write_text(
            yaml.safe_dump(config(kubeconfig, node, cluster_cidr, self.healthz_port, free_port()))
        )
        self.component = Component(
            "kube-proxy",
            [str(binary("kube-proxy", bin_dir)), f"--config={path}", "--v=2"],
            workdir / "logs" / "kube-proxy.log",
        )

    async def start(self, within_s: float = 120.0) -> None:
        route_services(self.gateway_ip)
        self.component.start()
        url = f"http://127.0.0.1:{self.healthz_port}/healthz"
        began = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() - began < within_s:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(url) as answer:
                        if answer.status == 200:
                            return
                await asyncio.sleep(0.25)
        raise RuntimeError(
            f"kube-proxy did not sync within {within_s:.0f}s: {self.component.tail(5)} "
            f"(log {self.component.log})"
        )


# kube-proxy's nftables chain names: service-<hash>-<ns>/<name>/<proto>/<port name>, and
# endpoint-<hash>-<ns>/<name>/<proto>/<port name>__<ip>/<port>.
_SERVICE_CHAIN = "service-"


def backends_in_ruleset(ruleset: dict[str, Any]) -> dict[str, dict[str, int]]:
    """'ns/name' -> {'proto/port name': endpoints} that kube-proxy's rules spread a
    Service's ClusterIP connections over, from `nft -j list ruleset` (pure).

    Each Service port's chain picks an endpoint with `numgen random mod N vmap {...}`
    (one `goto` per endpoint chain); a port without endpoints has no such rule."""
    out: dict[str, dict[str, int]] = {}
    for item in ruleset.get("nftables") or []:
        rule = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(rule, dict) or rule.get("table") != "kube-proxy":
            continue
        chain = str(rule.get("chain", ""))
        if not chain.startswith(_SERVICE_CHAIN):
            continue
        _, _, path = chain[len(_SERVICE_CHAIN) :].partition("-")
        ns, _, rest = path.partition("/")
        name, _, port = rest.partition("/")
        exprs = rule.get("expr")
        targets = _endpoint_gotos(exprs) if isinstance(exprs, list) else set()
        if ns and name and port and targets:
            ports = out.setdefault(f"{ns}/{name}", {})
            ports[port] = ports.get(port, 0) + len(targets)
    return out


def _endpoint_gotos(exprs: list[Any]) -> set[str]:
    """The endpoint chains a rule's numgen vmap (or a lone goto) jumps to."""
    found: set[str] = set()
    for expr in exprs:
        if not isinstance(expr, dict):
            continue
        vmap = expr.get("vmap")
        data = vmap.get("data") if isinstance(vmap, dict) else None
        elements = data.get("set") if isinstance(data, dict) else None
        for element in elements if isinstance(elements, list) else []:
            if isinstance(element, list) and len(element) == 2:
                found |= _endpoint_gotos([element[1]])
        goto = expr.get("goto")
        if isinstance(goto, dict) and str(goto.get("target", "")).startswith("endpoint-"):
            found.add(str(goto["target"]))
    return found


def read_backends() -> dict[str, dict[str, int]]:
    """backends_in_ruleset of this network namespace's rules; {} when nft cannot say."""
    try:
        done = subprocess.run(
            ["nft", "-j", "list", "ruleset"], capture_output=True, text=True, timeout=5
        )
        if done.returncode != 0:
            return {}
        return backends_in_ruleset(json.loads(done.stdout))
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return {}
