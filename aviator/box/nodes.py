"""Box Nodes: Node objects for pods to be bound to, kept Ready without a kubelet.

Every node carries `topology.kubernetes.io/zone`: `box`, or with `--zones N` the
zones box-a, box-b, ... round robin over the nodes (box-node-1 in box-a, box-node-2
in box-b, ...), for topology-aware routing.

The box's controller manager runs no node-lifecycle controller, so nothing taints or
evicts a node whose heartbeat is old; the box still refreshes the Ready condition
and the node's Lease so `kubectl get nodes` and anything that reads them tell the truth.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aviator import __version__
from aviator.box.podstatus import now_rfc3339
from aviator.kube import marks
from aviator.kube.client import ApiError, KubeClient
from aviator.kube.resources import LEASES, NODES

log = logging.getLogger(__name__)

NODE_IP = "127.0.0.1"
ZONE = "box"
LEASE_NAMESPACE = "kube-node-lease"


def node_names(count: int) -> list[str]:
    return [f"box-node-{i}" for i in range(1, count + 1)]


def zone_names(count: int) -> list[str]:
    """One zone is `box`; more are box-a, box-b, ..."""
    if count <= 1:
        return [ZONE]
    return [f"box-{chr(ord('a') + i)}" for i in range(count)]


def zone_of_node(index: int, zones: int) -> str:
    """Node `index` (from 0) of the box: its zone, round robin over the zones."""
    names = zone_names(zones)
    return names[index % len(names)]


def node_object(name: str, zone: str = ZONE) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                marks.LABEL_HOSTNAME: name,
                marks.LABEL_OS: "linux",
                marks.LABEL_ZONE: zone,
                marks.LABEL_BOX_NODE: "true",
            },
        },
        "spec": {},
    }


def node_status(heartbeat: str, since: str) -> dict[str, Any]:
    def cond(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": heartbeat,
            "lastTransitionTime": since,
        }

    return {
        "conditions": [
            cond("Ready", "True", "BoxRuntimeReady", "the box pod runtime is running"),
            cond("MemoryPressure", "False", "BoxNoPressure", ""),
            cond("DiskPressure", "False", "BoxNoPressure", ""),
            cond("PIDPressure", "False", "BoxNoPressure", ""),
        ],
        "addresses": [
            {"type": "InternalIP", "address": NODE_IP},
            {"type": "Hostname", "address": "localhost"},
        ],
        "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
        "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
        "nodeInfo": {
            "architecture": "amd64",
            "operatingSystem": "linux",
            "osImage": "aviator cluster in a box",
            "kernelVersion": "",
            "kubeletVersion": f"box-{__version__}",
            "kubeProxyVersion": f"box-{__version__}",
            "containerRuntimeVersion": "box://local-processes",
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
        },
    }


class BoxNodes:
    """Registers the nodes and refreshes their status and Lease every `heartbeat_s`."""

    def __init__(
        self,
        client: KubeClient,
        names: list[str],
        heartbeat_s: float = 10.0,
        zones: int = 1,
    ) -> None:
        self.client = client
        self.names = names
        self.zones = {name: zone_of_node(i, zones) for i, name in enumerate(names)}
        self.heartbeat_s = heartbeat_s
        self._since = now_rfc3339()

    async def register(self) -> None:
        for name in self.names:
            try:
                await self.client.create(NODES, node_object(name, self.zones[name]))
            except ApiError as err:
                if err.status != 409:
                    raise
            await self._beat(name)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            for name in self.names:
                try:
                    await self._beat(name)
                except (ApiError, OSError, TimeoutError) as err:
                    log.warning("node %s heartbeat failed: %s", name, err)

    async def _beat(self, name: str) -> None:
        now = now_rfc3339()
        await self.client.patch(
            NODES, name, {"status": node_status(now, self._since)}, subresource="status"
        )
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": LEASE_NAMESPACE},
            "spec": {
                "holderIdentity": name,
                "leaseDurationSeconds": 40,
                "renewTime": now.replace("Z", ".000000Z"),
            },
        }
        try:
            await self.client.patch(LEASES, name, {"spec": lease["spec"]}, LEASE_NAMESPACE)
        except ApiError as err:
            if not err.not_found:
                raise
            await self.client.create(LEASES, lease, LEASE_NAMESPACE)
