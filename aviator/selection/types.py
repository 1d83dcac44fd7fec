"""Inputs and outputs of the selection engine: pods, policy, verdicts, decisions.

All values are immutable. `LatencyEstimate` and `PodInput` are built for every pod
of every evaluation (thousands per reconcile), where a frozen dataclass's `__init__`
costs three times a plain one's: they are plain slotted dataclasses that nothing
assigns to after construction (hashable on their fields all the same); the others
are frozen. Times are plain floats in seconds (any monotonic-ish epoch the caller
likes, e.g. unix time); latencies are milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum


class Mode(StrEnum):
    """How the active set is chosen among measured pods."""

    TOP_N = "topN"
    PERCENTAGE = "percentage"
    THRESHOLD = "threshold"
    PREQUAL = "prequal"


class LoadCombine(StrEnum):
    """How prequal's load is made from requests in flight and the load pods report."""

    REPLACE = "replace"  # the reported load alone (RIF where a pod reported none)
    ADD = "add"  # RIF + weight x the reported load (0 where a pod reported none)


class PodState(StrEnum):
    """What a pod is doing after an evaluation (shown per pod in the status)."""

    ACTIVE = "active"  # measured and serving
    STANDBY = "standby"  # not serving: not selected, or not eligible (see the reason)
    EJECTED = "ejected"  # removed by the circuit breaker, waiting for its recovery interval
    HALF_OPEN = "halfOpen"  # out of traffic, measured by keep-warm probes, may be readmitted
    UNKNOWN = "unknown"  # no fresh latency data yet: serving so it gets measured (fail open)


class Reason(StrEnum):
    """Why a pod has its state (short CamelCase words, as Kubernetes reasons are)."""

    SELECTED = "Selected"  # chosen by the mode
    FASTEST_FALLBACK = "FastestFallback"  # threshold mode: none within it, the fastest serves
    NO_LATENCY_DATA = "NoLatencyData"  # unknown (no data or stale): kept serving
    LATENCY_STALE = "LatencyStale"  # measured, then silent: kept out, as it was
    MIN_ENDPOINTS = "MinEndpoints"  # added by the safety floor
    DAMPENED = "Dampened"  # a set change is pending; this pod keeps its old state for now
    NOT_SELECTED = "NotSelected"  # slower than the pods the mode chose
    OVER_THRESHOLD = "OverThreshold"  # threshold mode: p99 above latencyThreshold
    HOT = "Hot"  # prequal mode: load (requests in flight, or reported) above the quantile
    NOT_READY = "NotReady"
    TERMINATING = "Terminating"
    P99_ABOVE_THRESHOLD = "P99AboveThreshold"  # circuit breaker ejection: p99
    OPEN_REQUEST_ABOVE_THRESHOLD = "OpenRequestAboveThreshold"  # ejection: a request hangs
    ERROR_RATE_ABOVE_THRESHOLD = "ErrorRateAboveThreshold"  # ejection: too many errors
    RECOVERING = "Recovering"  # half-open: waiting for fresh samples under the threshold


@dataclass(slots=True, unsafe_hash=True)  # never assigned to (module docstring)
class LatencyEstimate:
    """A pod's latency over a window of measurements: what the latency store
    (aviator.latency.store) answers and the engine reads. One type from store to
    engine; it lives here because the engine may import nothing else of Aviator.

    Milliseconds. `rif` is the requests in flight at the last report; `age_s` how old
    the newest sample is; `source` what measured it ("ebpf", "probe"). The engine
    ranks by p99 and reads rif, samples and age; p50, p90 and the source are for
    people (status rows, the agent's GET /latency).

    The circuit breaker also reads `oldest_open_ms`, the age of the pod's oldest request
    still open at the latest report (0: none), and `statuses`/`errors`: over the same
    window as the quantiles, the responses whose status was read and how many of those
    were errors (HTTP 5xx, gRPC status other than OK). `protocol` is what the source
    recognised (http1, h2, grpc, opaque; "" unknown), for people. An estimate with no
    completed sample (`samples` 0) but an open request carries that request's age as
    its quantiles: a lower bound of its latency (see aviator.latency.store).

    Which samples the figures are built from, for people (the engine reads none of
    these): `samples` are the pod's traffic and, of those, `keepwarm` the agent's
    keep-warm probes of the policy's probePath (samples of the real path); the kubelet's
    probes are never among them: `probe_samples` of them in the same window, with their
    own `probe_p50_ms`/`probe_p99_ms` (None: none).
    """

    p50_ms: float
    p99_ms: float
    rif: int = 0
    samples: int = 1
    # When, not what: two estimates that say the same of a pod are equal at any age
    # (what lets a reconcile reuse what it built from an unchanged estimate).
    age_s: float = field(default=0.0, compare=False)
    p90_ms: float | None = None
    source: str = ""
    oldest_open_ms: float = 0.0
    statuses: int = 0
    errors: int = 0
    protocol: str = ""
    keepwarm: int = 0
    probe_samples: int = 0
    probe_p50_ms: float | None = None
    probe_p99_ms: float | None = None
    # The pod's own report of its load (the gauge the policy names, scraped by the
    # agent; e.g. a model server's waiting queue); None: none read.
    load: float | None = None

    @property
    def error_percent(self) -> float | None:
        """errors / statuses in percent; None when no status was read."""
        return 100.0 * self.errors / self.statuses if self.statuses else None


@dataclass(slots=True, unsafe_hash=True)  # never assigned to (module docstring)
class PodInput:
    """One pod of the target Service as the engine sees it.

    `fresh` is a fact of this evaluation, not of the measurement: samples arrived
    since the previous evaluation. Only fresh data moves the circuit breaker, so one
    slow window is not counted twice.

    `uid` is the pod's identity: what the engine remembers about a pod (breaker record,
    pending dampening set) is filed under it, so a pod recreated under the same name
    (a StatefulSet's) starts afresh. Without one, the name is the identity.

    `stale`: without a usable latency, whether the pod was measured before and its data
    went stale (its reporter went quiet, e.g. its node's agent restarting), as opposed
    to never measured. A stale pod keeps its place (see the engine).
    """

    name: str
    ip: str = ""
    node: str = ""
    ready: bool = True
    terminating: bool = False
    created: float = 0.0
    latency: LatencyEstimate | None = None
    fresh: bool = True
    uid: str = ""
    stale: bool = False

    @property
    def key(self) -> str:
        """What the engine's state is filed under: the uid, else the name."""
        return self.uid or self.name

    @property
    def eligible(self) -> bool:
        return self.ready and not self.terminating


DEFAULT_TOP_N = 3
DEFAULT_PERCENTAGE = 50
MAX_BACKOFF_FACTOR = 10.0  # repeated ejections wait at most 10 x recoveryInterval
# The error rule judges a pod only on at least this many responses with a status in
# the window: one error in two requests is not a 50 % error rate worth an ejection.
DEFAULT_ERROR_RATE_MIN_RESPONSES = 20


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """Circuit breaker settings (spec.circuitBreaker).

    `error_rate_percent` None: the error rule is off; otherwise a pod whose window holds
    at least `error_rate_min_responses` responses with a status, of which at least
    `error_rate_percent` % are errors, is in violation.
    """

    enabled: bool = False
    p99_threshold_ms: float = 500.0
    consecutive_violations: int = 3
    recovery_interval_s: float = 30.0
    max_ejection_percent: int = 50
    error_rate_percent: float | None = None
    error_rate_min_responses: int = DEFAULT_ERROR_RATE_MIN_RESPONSES

    def __post_init__(self) -> None:
        _require(self.p99_threshold_ms > 0, "p99_threshold_ms must be > 0")
        _require(
            self.error_rate_percent is None or 0 < self.error_rate_percent <= 100,
            "error_rate_percent must be in (0, 100]",
        )
        _require(self.error_rate_min_responses >= 1, "error_rate_min_responses must be >= 1")
        _require(self.consecutive_violations >= 1, "consecutive_violations must be >= 1")
        _require(self.recovery_interval_s >= 0, "recovery_interval_s must be >= 0")
        _require(0 <= self.max_ejection_percent <= 100, "max_ejection_percent must be 0..100")


@dataclass(frozen=True, slots=True)
class DampeningPolicy:
    """Dampening settings (spec.dampening)."""

    enabled: bool = True
    threshold_percent: float = 20.0
    consecutive_intervals: int = 3

    def __post_init__(self) -> None:
        _require(0 <= self.threshold_percent < 100, "threshold_percent must be in [0, 100)")
        _require(self.consecutive_intervals >= 1, "consecutive_intervals must be >= 1")

    @property
    def keep_factor(self) -> float:
        """An incumbent's p99 is multiplied by this when ranked against challengers."""
        return 1.0 - self.threshold_percent / 100.0


@dataclass(frozen=True, slots=True)
class SelectionPolicy:
    """Everything in the policy spec that the engine needs.

    `load_combine` None: prequal's hot/cold split reads requests in flight; otherwise
    the load the pods report (`LatencyEstimate.load`) in place of or beside them
    (`LoadCombine`, `load_weight`).

    `top_n` / `percentage` of None mean "not set": topN and percentage modes then use
    their defaults (3 and 50); prequal mode uses a set one as its budget (topN first)
    and otherwise keeps every cold pod.
    """

    mode: Mode = Mode.PERCENTAGE
    top_n: int | None = None
    percentage: int | None = None
    latency_threshold_ms: float = 100.0
    rif_quantile: float = 0.84
    load_combine: LoadCombine | None = None  # None: prequal's load is RIF alone
    load_weight: float = 1.0
    min_endpoints: int = 1
    stale_after_s: float = math.inf
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    dampening: DampeningPolicy = field(default_factory=DampeningPolicy)

    def __post_init__(self) -> None:
        _require(isinstance(self.mode, Mode), "mode must be a Mode")
        _require(self.top_n is None or self.top_n >= 1, "top_n must be >= 1")
        _require(
            self.percentage is None or 1 <= self.percentage <= 100, "percentage must be 1..100"
        )
        _require(self.latency_threshold_ms > 0, "latency_threshold_ms must be > 0")
        _require(0 < self.rif_quantile <= 1, "rif_quantile must be in (0, 1]")
        _require(
            math.isfinite(self.load_weight) and self.load_weight > 0, "load_weight must be > 0"
        )
        _require(self.min_endpoints >= 1, "min_endpoints must be >= 1")
        _require(self.stale_after_s >= 0, "stale_after_s must be >= 0")


@dataclass(frozen=True, slots=True)
class PodVerdict:
    state: PodState
    reason: Reason

    @property
    def serving(self) -> bool:
        return self.state in (PodState.ACTIVE, PodState.UNKNOWN)


class DecisionKind(StrEnum):
    EJECTED = "ejected"
    READMITTED = "readmitted"
    SET_CHANGED = "set_changed"
    OVERLOAD = "overload"


@dataclass(frozen=True, slots=True)
class Decision:
    """Something worth a Kubernetes Event.

    ejected / readmitted name one `pod`; set_changed lists `added` and `removed`;
    overload is emitted when overload begins (the condition says while it lasts).
    """

    kind: DecisionKind
    message: str
    pod: str | None = None
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Conditions:
    """Facts about the evaluation for the policy's status conditions."""

    no_eligible_pods: bool = False
    no_latency_data: bool = False  # every eligible pod is unknown
    overload: bool = False  # most eligible pods violate the breaker threshold
    pending: frozenset[str] | None = None  # dampening: the set waiting to be applied
    pending_streak: int = 0  # evaluations it has won in a row so far


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
