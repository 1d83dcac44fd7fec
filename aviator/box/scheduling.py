"""Which of the box's nodes a pending pod may be bound to: the part of a scheduler's
filtering the box's pods use, by node name (the box has no resources to fit).

A pod may name its nodes by `nodeSelector` on `kubernetes.io/hostname` and by required
node affinity on `metadata.name` (`matchFields`, what the DaemonSet controller writes
into each of its pods) or on the `kubernetes.io/hostname` label (`matchExpressions`;
every box node's hostname label is its name). Terms are ORed, the requirements of a
term ANDed, as the scheduler reads them. Anything else a pod asks for (other labels,
taints, resources) the box does not check: such a requirement holds on every node.
"""

from __future__ import annotations

from typing import Any

HOSTNAME = "kubernetes.io/hostname"


def _requirement_holds(req: dict[str, Any], node: str) -> bool:
    values = req.get("values") or []
    operator = req.get("operator")
    if operator == "In":
        return node in values
    if operator == "NotIn":
        return node not in values
    # Exists holds for every node; DoesNotExist, Gt and Lt on a name for none.
    return operator == "Exists"


def _term_holds(term: dict[str, Any], node: str) -> bool:
    fields = term.get("matchFields") or []
    exprs = term.get("matchExpressions") or []
    if not fields and not exprs:
        return False  # an empty term matches no node
    names = [f for f in fields if f.get("key") == "metadata.name"]
    names += [e for e in exprs if e.get("key") == HOSTNAME]
    return all(_requirement_holds(r, node) for r in names)


def eligible_nodes(spec: dict[str, Any], nodes: list[str]) -> list[str]:
    """The nodes (in the given order) that `spec` allows."""
    out = []
    selector = spec.get("nodeSelector") or {}
    terms = (
        ((spec.get("affinity") or {}).get("nodeAffinity") or {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", {})
        .get("nodeSelectorTerms")
    )
    for node in nodes:
        if selector.get(HOSTNAME, node) != node:
            continue
        if terms is not None and not any(_term_holds(t, node) for t in terms):
            continue
        out.append(node)
    return out
