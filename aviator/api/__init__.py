"""The AviatorPolicy API (aviator.example.com/v1alpha1): model, defaults, validation, CRD."""

from aviator.api.codec import FieldError, PolicyError
from aviator.api.durations import Duration, DurationError, format_duration, parse_duration
from aviator.api.policy import AviatorPolicy, from_dict
from aviator.api.status import AviatorPolicyStatus, Condition, PodStatus
from aviator.api.types import (
    AviatorPolicySpec,
    CircuitBreakerSpec,
    DampeningSpec,
    LatencySource,
    PrequalSpec,
    RoutingMode,
    RoutingSpec,
    SelectionMode,
    SelectionSpec,
    TargetRef,
)

__all__ = [
    "AviatorPolicy",
    "AviatorPolicySpec",
    "AviatorPolicyStatus",
    "CircuitBreakerSpec",
    "Condition",
    "DampeningSpec",
    "Duration",
    "DurationError",
    "FieldError",
    "LatencySource",
    "PodStatus",
    "PolicyError",
    "PrequalSpec",
    "RoutingMode",
    "RoutingSpec",
    "SelectionMode",
    "SelectionSpec",
    "TargetRef",
    "format_duration",
    "from_dict",
    "parse_duration",
]
