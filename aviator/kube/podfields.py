"""The fields of a Pod the controller reads: its Pod cache's projection.

Readers of the controller's Pod cache, and what they read:

- aviator.kube.pods: name, node, readiness (phase, the Ready condition), termination
  (deletionTimestamp), addresses (podIPs, podIP);
- aviator.reconcilers.podfacts and podindex: namespace, name, uid, labels,
  creationTimestamp (and aviator.kube.pods);
- aviator.reconcilers.endpoints: named target ports (containers' and restartable init
  containers' ports, restartPolicy), hostname and subdomain, nodeName;
- aviator.reconcilers.handoff: nodeName, hostNetwork, phase;
- aviator.controller.agents: phase, nodeName, uid, podIPs (which node an agent's pod
  runs on, which pod an IP is);
- metadata only: aviator.reconcilers.mapping (namespace, labels), through it
  aviator.controller.stalls, and aviator.controller.wiring (podIPs of a deleted pod).

ObjectMeta is kept whole but for managedFields. test/unit/test_kube_podfields.py
checks that each reader above that reads more than metadata answers the same on a
projected Pod as on the whole one. A new reader of a Pod field in the controller adds
the field here, and itself to the list and to that test.
"""

from __future__ import annotations

from typing import Any, TypedDict

from aviator.kube.projection import Projection


class ObjectMeta(TypedDict, total=False):
    name: str
    generateName: str
    namespace: str
    uid: str
    resourceVersion: str
    generation: int
    creationTimestamp: str
    deletionTimestamp: str
    deletionGracePeriodSeconds: int
    labels: dict[str, str]
    annotations: dict[str, str]
    ownerReferences: list[dict[str, Any]]
    finalizers: list[str]


class Container(TypedDict, total=False):
    name: str
    ports: list[dict[str, Any]]
    restartPolicy: str  # an init container's "Always": a sidecar, whose ports serve


class PodSpec(TypedDict, total=False):
    nodeName: str
    hostNetwork: bool
    hostname: str
    subdomain: str
    containers: list[Container]
    initContainers: list[Container]


class PodCondition(TypedDict, total=False):
    type: str
    status: str


class PodIP(TypedDict, total=False):
    ip: str


class PodStatus(TypedDict, total=False):
    phase: str
    conditions: list[PodCondition]
    podIP: str
    podIPs: list[PodIP]
    hostIP: str


class Pod(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: PodSpec
    status: PodStatus


CONTROLLER_POD = Projection("controller Pod", Pod)
