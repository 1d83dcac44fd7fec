"""What this node's agent is asked to hand off, read from the policies (pure).

The controller lists each hand-off in its policy's `status.handOffs` (see
aviator/reconcilers/handoff.py). An agent acts on an entry only when it names this
node AND the node-local Pod cache confirms it: a pod of that name runs on this node,
holds the entry's IP, and is not on the host network (whose address is the node's).
So an agent never acts on a pod of another node, whatever a status says, and a stale
entry for a pod whose IP went to a new pod matches nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aviator.agent.handoff.select import Target
from aviator.kube.addresses import normalize_ip
from aviator.kube.objects import JSON
from aviator.kube.pods import pod_ips


@dataclass(frozen=True)
class Order:
    """Hand `target` off for `policy` ("namespace/name") over `period_s` from now."""

    target: Target
    policy: str
    period_s: float


def _seconds_until(text: str, now: float) -> float | None:
    try:
        at = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except (TypeError, ValueError):
        return None
    return at.timestamp() - now


def orders(
    policies: Iterable[JSON], node: str, local_pod: Callable[[str], JSON | None], now: float
) -> dict[str, Order]:
    """Pod key → order, for the hand-offs of this node's pods (`local_pod` looks a
    "namespace/name" up in the node-local Pod cache; `now` is the wall clock)."""
    out: dict[str, Order] = {}
    for policy in policies:
        meta = policy.get("metadata") or {}
        ns = str(meta.get("namespace") or "")
        handoff = ((policy.get("spec") or {}).get("routing") or {}).get("handoff") or {}
        if handoff.get("enabled") is False:
            continue
        for entry in (policy.get("status") or {}).get("handOffs") or []:
            if not isinstance(entry, dict) or entry.get("node") != node:
                continue
            key = f"{ns}/{entry.get('pod')}"
            pod = local_pod(key)
            if pod is None or (pod.get("spec") or {}).get("nodeName") != node:
                continue
            if (pod.get("spec") or {}).get("hostNetwork"):
                continue
            ip = normalize_ip(str(entry.get("ip") or ""))
            if ip is None or ip not in {normalize_ip(i) for i in pod_ips(pod)}:
                continue
            ports = frozenset(p for p in entry.get("ports") or [] if isinstance(p, int))
            left = _seconds_until(str(entry.get("until") or ""), now)
            if not ports or left is None:
                continue
            out[key] = Order(Target(key, ip, ports), f"{ns}/{meta.get('name')}", max(0.0, left))
    return out
