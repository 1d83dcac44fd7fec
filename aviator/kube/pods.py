"""Facts about a Pod: readiness, termination, addresses, ports (pure).

Shared by the controller (which pods may serve), the agent (which local pods to map
and probe) and the box (which port a probe names).
"""

from __future__ import annotations

from typing import Any

from aviator.kube.addresses import normalize_ip
from aviator.kube.objects import JSON, Pod


def pod_name(pod: Pod) -> str:
    return str(pod.get("metadata", {}).get("name", ""))


def pod_node(pod: Pod) -> str:
    """spec.nodeName ("" while unscheduled)."""
    return str(pod.get("spec", {}).get("nodeName") or "")


def is_terminating(pod: Pod) -> bool:
    return pod.get("metadata", {}).get("deletionTimestamp") is not None


def is_ready(pod: Pod) -> bool:
    """Running with condition Ready=True (what the built-in controller calls ready)."""
    status = pod.get("status", {})
    if status.get("phase") != "Running":
        return False
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def is_eligible(pod: Pod) -> bool:
    """Ready, not terminating and addressed: a pod that may receive traffic."""
    return is_ready(pod) and not is_terminating(pod) and bool(pod_ips(pod))


def pod_ips(pod: Pod) -> list[str]:
    """status.podIPs (or podIP), normalised (see aviator.kube.addresses), valid ones only."""
    status = pod.get("status", {})
    raw = [str(p.get("ip", "")) for p in status.get("podIPs") or []]
    if not raw and status.get("podIP"):
        raw = [str(status["podIP"])]
    out: list[str] = []
    for ip in raw:
        canonical = normalize_ip(ip)
        if canonical is not None and canonical not in out:
            out.append(canonical)
    return out


def container_port(container: JSON, port: Any) -> int | None:
    """A port as a probe or a targetPort gives it: a number, or the name of one of the
    container's ports (None when it names none)."""
    if isinstance(port, int) and not isinstance(port, bool):
        return port
    text = str(port)
    if text.isdigit():
        return int(text)
    for declared in container.get("ports") or []:
        if declared.get("name") == text:
            return int(declared["containerPort"])
    return None
