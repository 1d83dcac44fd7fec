"""Which of an agent's endpoint windows the controller believes: only its own node's.

An agent speaks only for pods scheduled on its own node. The node is the one its
token names (see auth.py), never the one a message claims; the pods behind each
endpoint IP come from the controller's own Pod cache (`PodLocator`), never from the
message either. For every endpoint window of a snapshot, pure:

- no live pod at the IP (unknown, or only finished pods) → refused, `unknown_ip`;
- a live pod at the IP runs on another node → refused, `other_node` (client-role
  views of a remote pod included: they would let one node speak for another);
- otherwise kept, with `pod` set to the controller's name of the pod at that IP
  (the agent's name for it is not trusted either).

A finished pod (phase Succeeded or Failed) keeps its IP in its status after the IP
is free for reuse, so it never decides anything; a `PodLocator` drops them. A
terminating pod decides only when no other pod has the IP (one stuck terminating on
a lost node must not make its IP nobody's).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from aviator.latency.schema import EndpointWindow

UNKNOWN_IP = "unknown_ip"
OTHER_NODE = "other_node"


@dataclass(frozen=True, slots=True)
class PodPlace:
    """A live pod at an IP: its "namespace/name" key and the node it is scheduled on."""

    key: str
    node: str
    terminating: bool = False


# IP (normalised, as the schema parses it) → the live pods at that IP.
PodLocator = Callable[[str], Sequence[PodPlace]]


@dataclass(frozen=True, slots=True)
class Admission:
    """The windows kept, and how many were refused for which reason."""

    kept: tuple[EndpointWindow, ...]
    refused: Counter[str]


def place_of(places: Sequence[PodPlace], node: str) -> PodPlace | str:
    """The pod at an IP that `node`'s agent may speak for, or the reason it may not."""
    if len(places) == 1:  # the usual case: one pod at the IP, whatever its state
        only = places[0]
        return only if only.node == node else OTHER_NODE
    if not places:
        return UNKNOWN_IP
    running = [p for p in places if not p.terminating]
    mine = None
    for place in running or places:
        if place.node != node:
            return OTHER_NODE  # a pod elsewhere claims the IP too: nobody here decides
        mine = mine or place
    assert mine is not None
    return mine


def admit(endpoints: Iterable[EndpointWindow], node: str, locate: PodLocator) -> Admission:
    """The windows of `endpoints` that the agent of `node` may report."""
    kept: list[EndpointWindow] = []
    refused: Counter[str] = Counter()
    for ep in endpoints:
        found = place_of(locate(ep.ip), node)
        if isinstance(found, str):
            refused[found] += 1
        elif ep.pod == found.key:
            kept.append(ep)
        else:
            kept.append(dataclasses.replace(ep, pod=found.key))
    return Admission(tuple(kept), refused)
