"""The AviatorPolicy's status (aviator.example.com/v1alpha1): what the controller reports.

Like the spec's models in `aviator.api.types`, these dataclasses ARE the schema: each
field's `api_field` carries its JSON name and description for the CRD and docs/api.md.
The controller builds them (aviator/reconcilers/status.py) and writes them through the
codec; readers (the plugin, the agent's hand-off orders) decode them with `from_dict`.
"""

# api_field() is a dataclasses.field() that also records schema facts; ruff cannot
# know that, hence RUF009 (function call in a dataclass default) is off here.
# ruff: noqa: RUF009

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aviator.api.codec import decode, to_json
from aviator.api.schema import api_field


@dataclass(frozen=True, kw_only=True)
class Condition:
    """A condition of the policy (Ready, Degraded, OpaqueLatency), like metav1.Condition."""

    type: str = api_field(
        "type",
        """Condition type: Ready, Degraded, or OpaqueLatency (present while some pods
        speak no protocol the agent recognises; its message says what their latency
        means).""",
        required=True,
    )
    status: str = api_field("status", "True, False or Unknown.", required=True)
    reason: str = api_field(
        "reason",
        """Machine-readable reason in CamelCase, e.g. Routing, ServiceNotFound,
        NoEligiblePods, Overload, SelectorRestored, NoLatencyData, AgentMapsFull,
        InvalidSpec, NoRecognisedFraming.""",
        default="",
    )
    message: str = api_field("message", "Human-readable details.", default="")
    last_transition_time: str | None = api_field(
        "lastTransitionTime",
        "When the status last changed (RFC 3339).",
        default=None,
        format="date-time",
    )
    observed_generation: int | None = api_field(
        "observedGeneration",
        "The spec generation this condition was computed from.",
        default=None,
        format="int64",
    )


@dataclass(frozen=True, kw_only=True)
class PodStatus:
    """One pod of the target Service as the last evaluation saw it."""

    name: str = api_field("name", "Pod name.", required=True)
    ip: str = api_field("ip", "Pod IP.", default="")
    node: str = api_field("node", "Node the pod runs on.", default="")
    state: str = api_field(
        "state",
        """active (serving), standby (eligible, not chosen), ejected (circuit breaker;
        the reason says which rule: P99AboveThreshold, OpenRequestAboveThreshold,
        ErrorRateAboveThreshold), halfOpen (ejected, measured again before it is
        readmitted) or unknown (no latency data yet; kept serving so it gets
        measured).""",
        default="unknown",
    )
    p50_ms: float | None = api_field("p50Ms", "Median latency in milliseconds.", default=None)
    p99_ms: float | None = api_field("p99Ms", "p99 latency in milliseconds.", default=None)
    rif: int | None = api_field("rif", "Requests in flight when last measured.", default=None)
    load: float | None = api_field(
        "load",
        """The load the pod reported itself when last read: the gauge
        selection.prequal.load names (e.g. its waiting queue). Absent: not asked for,
        or not read.""",
        default=None,
    )
    samples: int = api_field(
        "samples",
        """Requests measured in the window, the base of p50Ms and p99Ms: the pod's
        traffic and the agent's keep-warm probes of probePath (keepWarmSamples of
        them). The kubelet's probes are never among them (probeSamples).""",
        default=0,
    )
    keep_warm_samples: int | None = api_field(
        "keepWarmSamples",
        """Of samples: the agent's keep-warm probes of probePath, sent to pods with
        too little traffic. Samples of the real path, so they count.""",
        default=None,
    )
    probe_samples: int | None = api_field(
        "probeSamples",
        """The kubelet's probes of the pod in the window (requests from the node's
        address to a readiness, liveness or startup probe's port and path; for gRPC
        probes, the HTTP/2 streams from the node's address to the probe's port, on
        connections not the agent's), counted apart: not in samples, p50Ms or p99Ms.""",
        default=None,
    )
    probe_p50_ms: float | None = api_field(
        "probeP50Ms", "Median latency of the kubelet's probes in milliseconds.", default=None
    )
    probe_p99_ms: float | None = api_field(
        "probeP99Ms", "p99 latency of the kubelet's probes in milliseconds.", default=None
    )
    reason: str | None = api_field(
        "reason", "Why the pod is in this state, when not obvious.", default=None
    )
    protocol: str | None = api_field(
        "protocol",
        """What the agent recognised on the pod's connections: http1, h2, grpc, or
        opaque (no recognised framing: latency is the time to the first response
        bytes, and no response status is read).""",
        default=None,
    )
    responses: int | None = api_field(
        "responses",
        "Responses in the window whose status was read (the base of errorRatePercent).",
        default=None,
    )
    error_rate_percent: float | None = api_field(
        "errorRatePercent",
        "Percentage of those responses that were errors (HTTP 5xx, gRPC status other than OK).",
        default=None,
    )
    oldest_open_ms: float | None = api_field(
        "oldestOpenMs",
        "Age in milliseconds of the pod's oldest request still open at the last report.",
        default=None,
    )


class TakeoverPhase(enum.StrEnum):
    PENDING = "Pending"
    TAKEN_OVER = "TakenOver"
    RESTORED = "Restored"


@dataclass(frozen=True, kw_only=True)
class TakeoverStatus:
    """The Service a takeover-mode policy took over, and the selector it had."""

    service: str = api_field("service", "Name of the Service taken over.", required=True)
    original_selector: dict[str, Any] = api_field(
        "originalSelector",
        """The Service's selector before the takeover (also in the Service's
        annotation aviator.example.com/original-selector); restored when the policy
        is deleted.""",
        required=True,
        preserve_unknown_fields=True,
    )
    phase: TakeoverPhase = api_field(
        "phase",
        """Pending: recorded, the Service not yet changed. TakenOver: the selector is
        removed and Aviator publishes the Service's endpoints. Restored: the Service
        got a selector back (by any means); it is not taken over again until the
        policy's generation or its aviator.example.com/retake annotation changes.""",
        required=True,
    )
    generation: int = api_field(
        "generation",
        "The policy generation of this takeover.",
        required=True,
        format="int64",
    )
    retake: str | None = api_field(
        "retake",
        "The policy's aviator.example.com/retake annotation at this takeover.",
        default=None,
    )
    endpoints_gone: bool = api_field(
        "endpointsGone",
        "The Service's Endpoints object is deleted and stayed deleted.",
        default=False,
    )


@dataclass(frozen=True, kw_only=True)
class HandOffStatus:
    """A pod that left the routed set, whose idle connections its node's agent is
    ending (routing.handoff). The agent of `node` acts on it, and only on its own pods."""

    pod: str = api_field("pod", "Pod name.", required=True)
    node: str = api_field("node", "Node the pod runs on (whose agent acts).", default="")
    ip: str = api_field("ip", "Pod IP whose connections are ended.", default="")
    ports: list[int] = api_field(
        "ports",
        "The Service's target ports on the pod.",
        default_factory=list,
        item_description="Port number.",
        list_type="atomic",
    )
    since: str = api_field(
        "since", "When the pod left the routed set (RFC 3339).", required=True, format="date-time"
    )
    until: str = api_field(
        "until", "End of the hand-off period (RFC 3339).", required=True, format="date-time"
    )


@dataclass(frozen=True, kw_only=True)
class ZoneStatus:
    """One zone under topology.mode latencyAware."""

    zone: str = api_field("zone", "Zone name (topology.kubernetes.io/zone).", required=True)
    state: str = api_field(
        "state",
        """local: the zone's clients use its own routed pods. spilling: they use the
        other local zones' routed pods.""",
        required=True,
    )
    reason: str = api_field(
        "reason",
        """Why: WithinMargin, OnlyZone, SlowerThanMargin, Overloaded, NoRoutedPods
        (no routed pod in the zone), NoZoneToSpillTo (every zone would spill; the
        fastest stays local), NoLatencyData (nothing measured; the state holds).""",
        default="",
    )
    streak: int = api_field(
        "streak",
        """Consecutive evaluations against the state so far (slow or overloaded while
        local, within the margin while spilling), towards spillAfter or returnAfter.""",
        default=0,
    )
    pods: int = api_field("pods", "Routed pods in the zone.", default=0)
    p99_ms: float | None = api_field(
        "p99Ms", "Median p99 in milliseconds of the zone's routed pods.", default=None
    )


@dataclass(frozen=True, kw_only=True)
class AviatorPolicyStatus:
    """What the controller observed and did at its last evaluation."""

    observed_generation: int | None = api_field(
        "observedGeneration",
        "The spec generation the status reflects.",
        default=None,
        format="int64",
    )
    active_pods: int = api_field("activePods", "Pods currently serving.", default=0)
    total_pods: int = api_field("totalPods", "Pods of the target Service.", default=0)
    p99_latency_ms: float | None = api_field(
        "p99LatencyMs",
        "p99 latency in milliseconds of the traffic served by the active pods.",
        default=None,
    )
    source: str = api_field(
        "source",
        """Latency source actually in use: ebpf, probe, mixed (both, on different
        nodes) or none (no data).""",
        default="none",
    )
    service_name: str | None = api_field(
        "serviceName",
        "The Service whose endpoints Aviator publishes (shadow or target).",
        default=None,
    )
    conditions: list[Condition] = api_field(
        "conditions",
        "Ready and Degraded, with reasons.",
        default_factory=list,
        list_type="map",
        list_map_keys=("type",),
    )
    pods: list[PodStatus] = api_field(
        "pods",
        "Every pod of the target Service with its latency and state.",
        default_factory=list,
        list_type="atomic",
    )
    ejected_pods: list[str] = api_field(
        "ejectedPods",
        "Names of the pods the circuit breaker has ejected.",
        default_factory=list,
        item_description="Pod name.",
        list_type="atomic",
    )
    hand_offs: list[HandOffStatus] = api_field(
        "handOffs",
        """Hand-offs in progress: pods that left the routed set whose idle client
        connections are being ended (routing.handoff).""",
        default_factory=list,
        list_type="atomic",
    )
    zones: list[ZoneStatus] = api_field(
        "zones",
        """topology.mode latencyAware: each zone's state (local or spilling) and why;
        also what a new leader continues from.""",
        default_factory=list,
        list_type="map",
        list_map_keys=("zone",),
    )
    last_evaluation_time: str | None = api_field(
        "lastEvaluationTime",
        "When the policy was last evaluated with a change worth recording (RFC 3339).",
        default=None,
        format="date-time",
    )
    takeover: TakeoverStatus | None = api_field(
        "takeover",
        """routing.mode takeover: the Service taken over, its original selector and
        where the takeover stands.""",
        default=None,
    )
    engine_state: dict[str, Any] | None = api_field(
        "engineState",
        """Opaque state of the selection engine (breaker and dampening), kept here so
        that a new leader continues where the previous one stopped. Not an API.""",
        default=None,
        preserve_unknown_fields=True,
    )

    def to_dict(self) -> dict[str, Any]:
        encoded: dict[str, Any] = to_json(self)
        return encoded

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, path: str = "status") -> AviatorPolicyStatus:
        status: AviatorPolicyStatus = decode(cls, data or {}, path)
        return status
