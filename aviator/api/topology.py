"""spec.topology of the AviatorPolicy API: which zone hints the published endpoints
carry (as the Service asks, or latency-aware locality). Part of the schema in
aviator.api.types, kept apart because it is one concept of its own.
"""

# ruff: noqa: RUF009  (api_field() is a dataclasses.field(); see aviator.api.types)

from __future__ import annotations

import enum
from dataclasses import dataclass

from aviator.api.schema import api_field


class TopologyMode(enum.StrEnum):
    SERVICE = "service"
    LATENCY_AWARE = "latencyAware"


@dataclass(frozen=True, kw_only=True)
class TopologySpec:
    """Zone hints on the published endpoints: as the target Service asks, or
    latency-aware locality (each zone's traffic stays in its zone while its pods are
    fast and not overloaded, and spills to other zones' pods when they are not)."""

    mode: TopologyMode = api_field(
        "mode",
        """service: the hints Kubernetes would set for the target Service (its
        topology-mode annotation or trafficDistribution). latencyAware: every routed
        pod is hinted for its own zone while that zone's pods are within marginPercent
        of the best other zone's and not overloaded; a zone that is not, for
        spillAfter evaluations in a row, spills: its clients are hinted onto the
        other zones' pods (its own pods get no zone's traffic) until it is back
        within the margin for returnAfter evaluations. kube-proxy follows the hints
        (topology-aware routing), so clients need nothing. status.zones shows each
        zone's state.""",
        default=TopologyMode.SERVICE,
    )
    margin_percent: int = api_field(
        "marginPercent",
        """A zone is slow when the median p99 of its routed pods is more than this
        percentage above the best other zone's. 0..1000.""",
        default=50,
        minimum=0,
        maximum=1000,
    )
    max_requests_in_flight: int | None = api_field(
        "maxRequestsInFlight",
        """A zone is overloaded when its routed pods hold more requests in flight
        than this on average. Unset: load never spills a zone. At least 1.""",
        default=None,
        minimum=1,
    )
    spill_after: int = api_field(
        "spillAfter",
        "Consecutive evaluations a zone is slow or overloaded before it spills. At least 1.",
        default=2,
        minimum=1,
    )
    return_after: int = api_field(
        "returnAfter",
        """Consecutive evaluations a spilling zone is within the margin and not
        overloaded before its traffic returns to its own pods. At least 1.""",
        default=3,
        minimum=1,
    )
