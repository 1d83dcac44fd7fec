"""What the box runs for a Pod: its containers as local processes (pure, no I/O).

The box can run one image, the test app (`aviator-testapp`, any registry or tag). A
pod spec becomes a `PodPlan`: per container the environment (env values and
downward-API fieldRefs resolved, `$(VAR)` references expanded as the kubelet does),
the ports it listens on, and its readiness probe. Anything the box cannot honour
raises `Unsupported` with the reason and message shown in the pod's status.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from aviator.kube.pods import container_port

KNOWN_IMAGE = "aviator-testapp"
DEFAULT_PORT = 8080

_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")
_LABEL_REF = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class Unsupported(Exception):
    """The box cannot run this pod; reason is CamelCase, message is for humans."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Probe:
    """A readiness probe (httpGet or tcpSocket) with the kubelet's defaults."""

    kind: str  # "http" | "tcp"
    port: int
    path: str = "/"
    host: str | None = None
    initial_delay_s: float = 0.0
    period_s: float = 10.0
    timeout_s: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


@dataclass(frozen=True)
class ContainerPlan:
    name: str
    image: str
    env: dict[str, str]
    ports: tuple[int, ...]
    readiness: Probe | None


@dataclass(frozen=True)
class PodPlan:
    containers: tuple[ContainerPlan, ...] = field(default_factory=tuple)

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(p for c in self.containers for p in c.ports)


def image_name(image: str) -> str:
    """'registry:5000/team/aviator-testapp:v1@sha256:..' -> 'aviator-testapp'."""
    without_digest = image.split("@", 1)[0]
    last = without_digest.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def is_known_image(image: str) -> bool:
    return image_name(image) == KNOWN_IMAGE


def plan_pod(pod: dict[str, Any], pod_ip: str, host_ip: str) -> PodPlan:
    spec = pod.get("spec", {})
    if spec.get("initContainers"):
        raise Unsupported("UnsupportedInitContainers", "the box does not run init containers")
    containers = spec.get("containers") or []
    for c in containers:
        image = str(c.get("image", ""))
        if not is_known_image(image):
            raise Unsupported(
                "UnsupportedImage",
                f"container {c.get('name')!r}: the box runs only the {KNOWN_IMAGE} image "
                f"(test/functional/testapp.py) as a local process, not {image!r}",
            )
    plans = tuple(_plan_container(pod, c, pod_ip, host_ip) for c in containers)
    seen: set[int] = set()
    for port in (p for plan in plans for p in plan.ports):
        if port in seen:
            raise Unsupported("PortConflict", f"two containers listen on port {port}")
        seen.add(port)
    return PodPlan(plans)


def _plan_container(
    pod: dict[str, Any], container: dict[str, Any], pod_ip: str, host_ip: str
) -> ContainerPlan:
    ports = tuple(int(p["containerPort"]) for p in container.get("ports") or [])
    env = container_env(pod, container, pod_ip, host_ip)
    if "PORT" not in env:
        env["PORT"] = str(ports[0] if ports else DEFAULT_PORT)
    # The box's network is the pod's own loopback address; the app must listen there.
    env["LISTEN_ADDR"] = pod_ip
    listen_port = int(env["PORT"])
    if listen_port not in ports:
        ports = (*ports, listen_port)
    return ContainerPlan(
        name=str(container.get("name", "app")),
        image=str(container.get("image", "")),
        env=env,
        ports=ports,
        readiness=_probe(container, container.get("readinessProbe")),
    )


def container_env(
    pod: dict[str, Any], container: dict[str, Any], pod_ip: str, host_ip: str
) -> dict[str, str]:
    meta = pod.get("metadata", {})
    env: dict[str, str] = {"HOSTNAME": str(meta.get("name", ""))}
    for item in container.get("env") or []:
        name = str(item["name"])
        if "valueFrom" in item:
            env[name] = _value_from(pod, item["valueFrom"], name, pod_ip, host_ip)
        else:
            env[name] = expand(str(item.get("value", "")), env)
    return env


def expand(value: str, env: dict[str, str]) -> str:
    """Kubelet `$(VAR)` expansion: defined vars are replaced, `$$` escapes, others stay."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, value)


def _value_from(
    pod: dict[str, Any], source: dict[str, Any], name: str, pod_ip: str, host_ip: str
) -> str:
    ref = source.get("fieldRef")
    if ref is None:
        kinds = ", ".join(sorted(source))
        raise Unsupported(
            "UnsupportedEnvSource",
            f"env {name}: the box resolves only value and fieldRef, not {kinds}",
        )
    path = str(ref.get("fieldPath", ""))
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return str(simple[path] or "")
    match = _LABEL_REF.match(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise Unsupported("UnsupportedEnvSource", f"env {name}: fieldRef {path!r} is not supported")


def _probe(container: dict[str, Any], spec: dict[str, Any] | None) -> Probe | None:
    if not spec:
        return None
    timing = {
        "initial_delay_s": float(spec.get("initialDelaySeconds", 0)),
        "period_s": float(spec.get("periodSeconds", 10)),
        "timeout_s": float(spec.get("timeoutSeconds", 1)),
        "success_threshold": int(spec.get("successThreshold", 1)),
        "failure_threshold": int(spec.get("failureThreshold", 3)),
    }
    if "httpGet" in spec:
        get = spec["httpGet"]
        if str(get.get("scheme", "HTTP")).upper() != "HTTP":
            raise Unsupported("UnsupportedProbe", "the box probes over plain HTTP only")
        return Probe(
            kind="http",
            port=resolve_port(container, get.get("port")),
            path=str(get.get("path", "/")),
            host=get.get("host") or None,
            **timing,  # type: ignore[arg-type]
        )
    if "tcpSocket" in spec:
        tcp = spec["tcpSocket"]
        return Probe(
            kind="tcp",
            port=resolve_port(container, tcp.get("port")),
            host=tcp.get("host") or None,
            **timing,  # type: ignore[arg-type]
        )
    raise Unsupported("UnsupportedProbe", "the box runs httpGet and tcpSocket probes only")


def resolve_port(container: dict[str, Any], port: Any) -> int:
    """A probe or Service targetPort: a number, or the name of a container port."""
    number = container_port(container, port)
    if number is None:
        raise Unsupported("UnsupportedProbe", f"no container port named {str(port)!r}")
    return number
