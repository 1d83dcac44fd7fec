"""Pod status as the kubelet would report it, built from what the box knows (pure).

The box writes the whole status through the status subresource with a merge patch;
it is the only writer of a box pod's status (there is no kubelet and no scheduler), so
replacing the conditions list wholesale is safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ContainerState:
    name: str
    image: str
    running: bool
    ready: bool
    started_at: str | None
    restart_count: int = 0
    pid: int | None = None
    waiting_reason: str | None = None
    waiting_message: str | None = None
    last_exit_code: int | None = None


def _condition(kind: str, ok: bool, since: str, reason: str | None = None) -> dict[str, Any]:
    cond: dict[str, Any] = {
        "type": kind,
        "status": "True" if ok else "False",
        "lastTransitionTime": since,
        "lastProbeTime": None,
    }
    if reason:
        cond["reason"] = reason
    return cond


def running_status(
    *,
    pod_ip: str,
    host_ip: str,
    start_time: str,
    containers: list[ContainerState],
    transitions: dict[str, str],
) -> dict[str, Any]:
    """Phase Running; Ready when every container is ready. `transitions` maps a
    condition type to when it last changed, so unchanged conditions keep their time."""
    all_ready = bool(containers) and all(c.ready for c in containers)
    ready_reason = None if all_ready else "ContainersNotReady"
    conditions = [
        _condition("PodReadyToStartContainers", True, transitions["PodReadyToStartContainers"]),
        _condition("Initialized", True, transitions["Initialized"]),
        _condition("Ready", all_ready, transitions["Ready"], ready_reason),
        _condition("ContainersReady", all_ready, transitions["ContainersReady"], ready_reason),
        _condition("PodScheduled", True, transitions["PodScheduled"]),
    ]
    return {
        "phase": "Running",
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": start_time,
        "conditions": conditions,
        "containerStatuses": [_container_status(c) for c in containers],
    }


def _container_status(c: ContainerState) -> dict[str, Any]:
    state: dict[str, Any]
    if c.running:
        state = {"running": {"startedAt": c.started_at}}
    else:
        state = {"waiting": {"reason": c.waiting_reason or "ContainerCreating"}}
        if c.waiting_message:
            state["waiting"]["message"] = c.waiting_message
    status: dict[str, Any] = {
        "name": c.name,
        "image": c.image,
        "imageID": f"box://{c.image}",
        "ready": c.ready,
        "started": c.running,
        "restartCount": c.restart_count,
        "state": state,
    }
    if c.pid is not None:
        status["containerID"] = f"box://{c.pid}"
    if c.last_exit_code is not None:
        status["lastState"] = {"terminated": {"exitCode": c.last_exit_code, "reason": "Error"}}
    return status


def unsupported_status(
    *, reason: str, message: str, host_ip: str, start_time: str, failed: bool
) -> dict[str, Any]:
    """A pod the box cannot run. Bare pods fail; pods owned by a controller stay Pending
    with the reason on their containers, as a kubelet does with an image it cannot pull,
    because a Failed pod makes its ReplicaSet create a replacement, forever."""
    status: dict[str, Any] = {
        "phase": "Failed" if failed else "Pending",
        "reason": reason,
        "message": message,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": start_time,
        "conditions": [
            _condition("PodScheduled", True, start_time),
            _condition("Ready", False, start_time, reason),
            _condition("ContainersReady", False, start_time, reason),
        ],
    }
    return status


def unsupported_container_statuses(
    pod: dict[str, Any], reason: str, message: str
) -> list[dict[str, Any]]:
    return [
        _container_status(
            ContainerState(
                name=str(c.get("name", "")),
                image=str(c.get("image", "")),
                running=False,
                ready=False,
                started_at=None,
                waiting_reason=reason,
                waiting_message=message,
            )
        )
        for c in pod.get("spec", {}).get("containers") or []
    ]


def has_controller_owner(pod: dict[str, Any]) -> bool:
    refs = pod.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("controller") for ref in refs)
