"""The AviatorPolicy API (aviator.example.com/v1alpha1): spec, status, defaults, rules.

The dataclasses here ARE the schema: each field's `api_field` carries its JSON name,
description, default, bounds and CEL rules, from which `aviator manifests` generates
the CRD and docs/api.md its reference table. `from_dict` turns a raw object from the
API server into typed values, applying the same defaults (so a policy stored under an
older CRD still works) and the same validation (so anything that slipped past an
older CRD becomes a clear error naming the field, never a crash deep in the
controller).
"""

# api_field() is a dataclasses.field() that also records schema facts; ruff cannot
# know that, hence RUF009 (function call in a dataclass default) is off here.
# ruff: noqa: RUF009

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from aviator.api.codec import decode, to_json
from aviator.api.durations import Duration
from aviator.api.rules import MAX_NAME_LENGTH, duration_bounds, not_empty, service_name
from aviator.api.schema import Rule, api_field
from aviator.api.topology import TopologySpec

GROUP = "aviator.example.com"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "AviatorPolicy"
PLURAL = "aviatorpolicies"
SINGULAR = "aviatorpolicy"
SHORT_NAME = "avp"
CATEGORY = "aviator"

MIN_EVALUATION_INTERVAL = Duration.parse("200ms")
SHADOW_SUFFIX = "-aviator"
# A shadow Service named <target>-aviator must itself be a valid Service name.
MAX_TARGET_FOR_SHADOW = MAX_NAME_LENGTH - len(SHADOW_SUFFIX)


class LatencySource(enum.StrEnum):
    EBPF = "ebpf"
    PROBE = "probe"


class SelectionMode(enum.StrEnum):
    TOP_N = "topN"
    PERCENTAGE = "percentage"
    THRESHOLD = "threshold"
    PREQUAL = "prequal"


class LoadCombine(enum.StrEnum):
    REPLACE = "replace"
    ADD = "add"


# A Prometheus metric name (the exposition format's own rule).
METRIC_NAME_PATTERN = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"


class RoutingMode(enum.StrEnum):
    SHADOW = "shadow"
    TAKEOVER = "takeover"


# ---------------------------------------------------------------------------- spec


@dataclass(frozen=True, kw_only=True)
class TargetRef:
    """The Service whose pods Aviator chooses from."""

    kind: str = api_field(
        "kind",
        "Kind of the target. Only Service is supported.",
        default="Service",
        max_length=63,
        rules=(
            Rule(
                cel="self == 'Service'",
                message="targetRef.kind must be Service",
                holds=lambda k: k == "Service",
            ),
        ),
    )
    name: str = api_field(
        "name",
        "Name of the target Service, in the policy's namespace.",
        required=True,
        max_length=MAX_NAME_LENGTH,
        rules=(not_empty("targetRef.name"), service_name("targetRef.name")),
    )


@dataclass(frozen=True, kw_only=True)
class LoadSpec:
    """A load the pods report themselves: a Prometheus gauge on their own metrics port,
    read by the node's agent once per report interval."""

    metric: str = api_field(
        "metric",
        """Name of the gauge, e.g. vllm:num_requests_waiting (a model server's waiting
        queue) or vllm:gpu_cache_usage_perc (KV-cache use). Every series of that name
        in the pod's exposition is summed.""",
        required=True,
        max_length=200,
        pattern=METRIC_NAME_PATTERN,
    )
    port: int = api_field(
        "port",
        "The pod's port serving the metrics (plain HTTP). 1..65535.",
        required=True,
        minimum=1,
        maximum=65535,
    )
    path: str = api_field(
        "path",
        "The path of the Prometheus text exposition. Must start with '/'.",
        default="/metrics",
        max_length=1024,
        rules=(
            Rule(
                cel="self.startsWith('/')",
                message="prequal.load.path must start with '/'",
                holds=lambda p: p.startswith("/"),
            ),
        ),
    )
    combine: LoadCombine = api_field(
        "combine",
        """replace: the reported load alone is prequal's load (a pod whose gauge was
        not read: its requests in flight). add: requests in flight + weight x the
        reported load.""",
        default=LoadCombine.REPLACE,
    )
    weight: float = api_field(
        "weight",
        """Multiplies the reported load in add mode (e.g. 10 makes a KV-cache use of
        0..1 count like 0..10 requests). Greater than 0.""",
        default=1.0,
        minimum=0,
        exclusive_minimum=True,
        maximum=1_000_000,
    )


@dataclass(frozen=True, kw_only=True)
class PrequalSpec:
    """Settings of the prequal selection mode (Hot-Cold Lexicographic)."""

    rif_quantile: float = api_field(
        "rifQuantile",
        """Pods whose load (requests in flight (RIF), or the load they report: see
        load) is above this quantile of all pods' load are hot; the fastest of the
        cold pods serve. Exclusive range (0, 1).""",
        default=0.84,
        minimum=0,
        exclusive_minimum=True,
        maximum=1,
        exclusive_maximum=True,
    )
    load: LoadSpec | None = api_field(
        "load",
        """A per-pod gauge the pods already expose (queue depth, KV-cache use) to read
        as prequal's load in place of or beside requests in flight. Unset: requests
        in flight alone.""",
        default=None,
    )


@dataclass(frozen=True, kw_only=True)
class SelectionSpec:
    """How the serving pods are chosen among the eligible ones."""

    mode: SelectionMode = api_field(
        "mode",
        """Pod selection strategy. topN: the N fastest pods by p99. percentage: the
        fastest ceil(P% of eligible pods), at least one. threshold: every pod whose p99
        is within latencyThreshold (the single fastest if none is). prequal: pods
        that are not hot by requests in flight, fastest first, up to the percentage
        share (Hot-Cold Lexicographic).""",
        default=SelectionMode.PERCENTAGE,
    )
    top_n: int = api_field(
        "topN",
        "Number of pods to keep in topN mode. At least 1.",
        default=3,
        minimum=1,
    )
    percentage: int = api_field(
        "percentage",
        "Percentage of the eligible pods to keep in percentage and prequal modes (rounded up). 1..100.",
        default=50,
        minimum=1,
        maximum=100,
    )
    prequal: PrequalSpec = api_field(
        "prequal",
        "Settings of the prequal selection mode (Hot-Cold Lexicographic).",
        default_factory=PrequalSpec,
    )


@dataclass(frozen=True, kw_only=True)
class CircuitBreakerSpec:
    """Ejects pods whose p99 stays above a threshold, that hold a request open longer
    than it, or (when set) that answer too many errors; re-admits them when they recover."""

    enabled: bool = api_field("enabled", "Enable the circuit breaker.", default=False)
    p99_threshold: Duration = api_field(
        "p99Threshold",
        """A pod whose p99 latency is above this is in violation. So is a pod whose
        oldest request still open is older than this (it stopped answering): that pod
        is ejected at the first evaluation that sees it, which the controller runs as
        soon as an agent reports it, without waiting for evaluationInterval.""",
        default=Duration.parse("500ms"),
        rules=(duration_bounds("circuitBreaker.p99Threshold"),),
    )
    consecutive_violations: int = api_field(
        "consecutiveViolations",
        "Consecutive evaluations in violation before a pod is ejected. At least 1.",
        default=3,
        minimum=1,
    )
    error_rate_percent: float | None = api_field(
        "errorRatePercent",
        """A pod is in violation when at least this percentage of its responses in
        the latency window are errors (HTTP 5xx, gRPC status other than OK), counted
        from the responses whose status the agent read. Unset: errors never eject.
        Greater than 0, at most 100.""",
        default=None,
        minimum=0,
        exclusive_minimum=True,
        maximum=100,
    )
    error_rate_min_responses: int = api_field(
        "errorRateMinResponses",
        """The error rate is judged only on windows holding at least this many
        responses with a status, so one error in two requests ejects nobody. At
        least 1.""",
        default=20,
        minimum=1,
    )
    recovery_interval: Duration = api_field(
        "recoveryInterval",
        """Time an ejected pod waits before it is probed again (half-open); repeated
        ejections double it, up to a cap.""",
        default=Duration.parse("30s"),
        rules=(duration_bounds("circuitBreaker.recoveryInterval"),),
    )
    max_ejection_percent: int = api_field(
        "maxEjectionPercent",
        """At most this percentage of the eligible pods may be ejected at once (one pod
        may always go). 0..100.""",
        default=50,
        minimum=0,
        maximum=100,
    )


@dataclass(frozen=True, kw_only=True)
class DampeningSpec:
    """Suppresses endpoint changes caused by transient latency spikes (no flapping)."""

    enabled: bool = api_field("enabled", "Enable dampening.", default=True)
    threshold_percent: int = api_field(
        "thresholdPercent",
        """An outside pod replaces a serving pod only if its p99 is better by at least
        this percentage. 0..100.""",
        default=20,
        minimum=0,
        maximum=100,
    )
    consecutive_intervals: int = api_field(
        "consecutiveIntervals",
        """A new set of serving pods is applied only after it has won this many
        evaluations in a row. At least 1.""",
        default=3,
        minimum=1,
    )


@dataclass(frozen=True, kw_only=True)
class HandOffSpec:
    """Moving kept-alive connections off pods that leave the routed set."""

    enabled: bool = api_field(
        "enabled",
        """When a pod leaves the routed set (deselected, ejected, replaced), its
        node's agent ends the pod's idle client connections on the Service's target
        ports, so pooled clients re-dial through kube-proxy to the pods now routed.
        Never a connection with a request in flight, never the pod's own outbound
        connections or the node's probes, never the last routed pod. Takeover mode
        only: in shadow mode the target Service still routes every pod.""",
        default=True,
    )
    period: Duration = api_field(
        "period",
        """The ending of a pod's connections is spread over this time, so their
        clients re-dial gradually instead of all at once. 0s ends them at once.""",
        default=Duration.parse("5s"),
    )


@dataclass(frozen=True, kw_only=True)
class RoutingSpec:
    """Which Service carries the latency-aware endpoints."""

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.mode == 'shadow' || !has(self.serviceName)",
            message="routing.serviceName applies only to routing.mode shadow",
            holds=lambda r: r.mode == RoutingMode.SHADOW or r.service_name is None,
            field_path=".serviceName",
        ),
    )

    mode: RoutingMode = api_field(
        "mode",
        """shadow: Aviator creates a selector-less Service (serviceName, default
        <targetRef.name>-aviator) with the target's ports and publishes the chosen
        pods as its endpoints; the target Service is untouched and clients opt in by
        calling the shadow name. takeover: Aviator removes the target Service's
        selector (saving it in an annotation, restored when the policy is deleted)
        and publishes the chosen pods as the target's own endpoints.""",
        default=RoutingMode.SHADOW,
    )
    service_name: str | None = api_field(
        "serviceName",
        "Name of the shadow Service (shadow mode only). Default: <targetRef.name>-aviator.",
        default=None,
        max_length=MAX_NAME_LENGTH,
        rules=(not_empty("routing.serviceName"), service_name("routing.serviceName")),
    )
    handoff: HandOffSpec = api_field(
        "handoff",
        """Ending idle kept-alive connections of pods that leave the routed set (keep-alive
        pools never re-dial on their own, so routing alone does not move them).""",
        default_factory=HandOffSpec,
    )

    def service_for(self, target: str) -> str:
        """The Service whose endpoints Aviator owns for a target Service."""
        if self.mode == RoutingMode.TAKEOVER:
            return target
        return self.service_name or f"{target}{SHADOW_SUFFIX}"


@dataclass(frozen=True, kw_only=True)
class AviatorPolicySpec:
    """Desired behaviour: which Service, how latency is measured, how pods are chosen."""

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel=(
                "!has(self.routing) || !has(self.routing.serviceName) "
                "|| self.routing.serviceName != self.targetRef.name"
            ),
            message="routing.serviceName must differ from targetRef.name",
            holds=lambda s: s.routing.service_name != s.target_ref.name,
            field_path=".routing.serviceName",
        ),
        Rule(
            cel=(
                "(has(self.routing) && (self.routing.mode != 'shadow' "
                "|| has(self.routing.serviceName))) "
                f"|| size(self.targetRef.name) <= {MAX_TARGET_FOR_SHADOW}"
            ),
            message=(
                f"targetRef.name must be at most {MAX_TARGET_FOR_SHADOW} characters in "
                "shadow mode unless routing.serviceName is set (the shadow Service is "
                f"named <targetRef.name>{SHADOW_SUFFIX})"
            ),
            holds=lambda s: (
                s.routing.mode != RoutingMode.SHADOW
                or s.routing.service_name is not None
                or len(s.target_ref.name) <= MAX_TARGET_FOR_SHADOW
            ),
            field_path=".targetRef.name",
        ),
    )

    target_ref: TargetRef = api_field(
        "targetRef", "The Service whose pods Aviator chooses from.", required=True
    )
    latency_threshold: Duration = api_field(
        "latencyThreshold",
        "Maximum acceptable p99 latency of a pod in threshold mode.",
        default=Duration.parse("100ms"),
        rules=(duration_bounds("latencyThreshold"),),
    )
    evaluation_interval: Duration = api_field(
        "evaluationInterval",
        "How often pod latency is re-evaluated.",
        default=Duration.parse("5s"),
        rules=(duration_bounds("evaluationInterval", MIN_EVALUATION_INTERVAL),),
    )
    latency_source: LatencySource = api_field(
        "latencySource",
        """Where latency comes from. ebpf: per-node agents measure real requests in the
        kernel (no sidecars). probe: the controller sends HTTP probes to
        targetPort/probePath itself (works without agents). status.source shows the
        source really used.""",
        default=LatencySource.EBPF,
    )
    target_port: int = api_field(
        "targetPort",
        "Pod port for probes (probe mode, and keep-warm probes of idle pods). 1..65535.",
        default=8080,
        minimum=1,
        maximum=65535,
    )
    probe_path: str = api_field(
        "probePath",
        "Path for probes. Must start with '/'. HTTP/1.1 and h2c probes GET it; keep-warm "
        "probes of gRPC pods call it when it is a gRPC method path (/package.Service/Method), "
        "else the standard health check /grpc.health.v1.Health/Check. A pod that has "
        "served nothing yet is probed in gRPC when the path can only name a gRPC method "
        "(a dotted package.Service and an UpperCamelCase method), else in HTTP/1.1.",
        default="/",
        max_length=1024,
        rules=(
            Rule(
                cel="self.startsWith('/')",
                message="probePath must start with '/'",
                holds=lambda p: p.startswith("/"),
            ),
        ),
    )
    selection: SelectionSpec = api_field(
        "selection",
        "How the serving pods are chosen among the eligible (ready) ones.",
        default_factory=SelectionSpec,
    )
    circuit_breaker: CircuitBreakerSpec = api_field(
        "circuitBreaker",
        """Circuit breaker: ejects pods whose p99 stays above p99Threshold, and
        re-admits them once they recover.""",
        default_factory=CircuitBreakerSpec,
    )
    dampening: DampeningSpec = api_field(
        "dampening",
        """Dampening: suppresses endpoint changes caused by transient latency spikes,
        so the set of serving pods does not flap.""",
        default_factory=DampeningSpec,
    )
    min_endpoints: int = api_field(
        "minEndpoints",
        """Never serve through fewer pods than this (when that many are eligible).
        At least 1.""",
        default=1,
        minimum=1,
    )
    routing: RoutingSpec = api_field(
        "routing",
        """Which Service carries the latency-aware endpoints: a shadow Service next
        to the target (default) or the target Service itself (takeover).""",
        default_factory=RoutingSpec,
    )
    topology: TopologySpec = api_field(
        "topology",
        """Zone hints on the published endpoints: the target Service's own topology
        routing (default) or latency-aware locality.""",
        default_factory=TopologySpec,
    )

    @property
    def routed_service(self) -> str:
        """The Service whose endpoints Aviator owns for this policy."""
        return self.routing.service_for(self.target_ref.name)

    def to_dict(self) -> dict[str, Any]:
        """The fully defaulted spec as JSON (what the API server stores)."""
        encoded: dict[str, Any] = to_json(self)
        return encoded

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, path: str = "spec") -> AviatorPolicySpec:
        """Decode with defaults; raises PolicyError naming every bad field."""
        spec: AviatorPolicySpec = decode(cls, data, path)
        return spec
