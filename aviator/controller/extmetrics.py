"""The Kubernetes external metrics API (`external.metrics.k8s.io/v1beta1`) as the
controller serves it: per-Service latency for HorizontalPodAutoscalers. Pure: requests
in, JSON bodies out; the HTTP side is aviator.controller.metricsapi, the figures come
from aviator.controller.servicelatency.

Metrics (docs/autoscaling.md), each one value per Service an AviatorPolicy targets,
labelled `service` (the target Service's name) and `policy`:

| metric | value |
|---|---|
| `aviator_service_p50_ms` | median latency of the requests the Service's pods served in the window, ms |
| `aviator_service_p99_ms` | their p99, ms |
| `aviator_service_requests_in_flight` | requests open on the Service's pods at the agents' latest reports |
| `aviator_service_error_rate_percent` | errors among the responses whose status was read, % |

A request is `GET /apis/external.metrics.k8s.io/v1beta1/namespaces/NS/METRIC
?labelSelector=SEL` (what the HPA controller sends for an `External` metric with a
`selector`); the answer is an `ExternalMetricValueList` of the items whose labels the
selector matches. A figure that is not known (no fresh sample, no status read) has no
item: the HPA then keeps the replica count instead of scaling on a guess. Values are
Kubernetes quantities with milli precision ("250", "12345m" = 12.345).

Discovery is `GET /apis/external.metrics.k8s.io/v1beta1`: an `APIResourceList` of the
metric names (namespaced, verbs get and list), as custom-metrics-apiserver answers.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aviator.kube.selectors import Selector, SelectorError, parse_selector

GROUP = "external.metrics.k8s.io"
VERSION = "v1beta1"
GROUP_VERSION = f"{GROUP}/{VERSION}"
BASE_PATH = f"/apis/{GROUP_VERSION}"
APISERVICE_NAME = f"{VERSION}.{GROUP}"

SERVICE_LABEL = "service"
POLICY_LABEL = "policy"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ServiceFigures:
    """One Service's latency over the store's window (None: not known)."""

    service: str
    policy: str
    p50_ms: float | None
    p99_ms: float | None
    requests_in_flight: int | None
    error_rate_percent: float | None


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    description: str
    read: Callable[[ServiceFigures], float | None]


METRICS: Mapping[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "aviator_service_p50_ms",
            "median latency of the Service's requests in the window, milliseconds",
            lambda f: f.p50_ms,
        ),
        Metric(
            "aviator_service_p99_ms",
            "p99 latency of the Service's requests in the window, milliseconds",
            lambda f: f.p99_ms,
        ),
        Metric(
            "aviator_service_requests_in_flight",
            "requests open on the Service's pods at the latest reports",
            lambda f: None if f.requests_in_flight is None else float(f.requests_in_flight),
        ),
        Metric(
            "aviator_service_error_rate_percent",
            "errors among the responses whose status was read in the window, percent",
            lambda f: f.error_rate_percent,
        ),
    )
}


class Problem(Exception):
    """A request the API refuses: an HTTP status and a metav1.Status body."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def body(self) -> JSON:
        return status_body(self.code, self.reason, self.message)


def status_body(code: int, reason: str, message: str) -> JSON:
    """A metav1.Status, the body every Kubernetes API error carries."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


@dataclass(frozen=True, slots=True)
class MetricRequest:
    namespace: str
    metric: Metric
    selector: Selector


def parse_request(namespace: str, metric: str, label_selector: str) -> MetricRequest:
    """The request for `metric` in `namespace` with the `labelSelector` query value;
    `Problem` (400 BadRequest, 404 NotFound) when it asks for nothing we serve."""
    if not _DNS_LABEL.match(namespace):
        raise Problem(400, "BadRequest", f"invalid namespace {namespace[:80]!r}")
    found = METRICS.get(metric)
    if found is None:
        raise Problem(
            404,
            "NotFound",
            f"no external metric {metric[:80]!r}; served: {', '.join(sorted(METRICS))}",
        )
    try:
        selector = parse_selector(label_selector)
    except SelectorError as exc:
        raise Problem(400, "BadRequest", f"labelSelector: {exc}") from exc
    return MetricRequest(namespace, found, selector)


def quantity(value: float) -> str | None:
    """`value` as a Kubernetes quantity with milli precision: "250", "12345m"; None
    for what no quantity says (negative, NaN, infinite)."""
    if not math.isfinite(value) or value < 0:
        return None
    milli = round(value * 1000)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def labels_of(figures: ServiceFigures) -> dict[str, str]:
    return {SERVICE_LABEL: figures.service, POLICY_LABEL: figures.policy}


def value_list(
    request: MetricRequest,
    services: Iterable[ServiceFigures],
    now: datetime.datetime,
    window_s: float,
) -> JSON:
    """The ExternalMetricValueList answering `request` over `services`' figures: one
    item per Service the selector matches whose figure is known, by Service name."""
    stamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    items = []
    for figures in sorted(services, key=lambda f: f.service):
        labels = labels_of(figures)
        if not request.selector.matches(labels):
            continue
        raw = request.metric.read(figures)
        value = None if raw is None else quantity(raw)
        if value is None:
            continue
        items.append(
            {
                "metricName": request.metric.name,
                "metricLabels": labels,
                "timestamp": stamp,
                "window": max(1, math.ceil(window_s)),
                "value": value,
            }
        )
    return {
        "kind": "ExternalMetricValueList",
        "apiVersion": GROUP_VERSION,
        "metadata": {},
        "items": items,
    }


def resource_list() -> JSON:
    """The APIResourceList of the group version: every metric, namespaced."""
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": GROUP_VERSION,
        "resources": [
            {
                "name": name,
                "singularName": "",
                "namespaced": True,
                "kind": "ExternalMetricValueList",
                "verbs": ["get", "list"],
            }
            for name in sorted(METRICS)
        ],
    }


def resource_attributes(request: MetricRequest) -> JSON:
    """What a SubjectAccessReview asks for this request: `list` of the metric in the
    namespace, in the group, as the API server's own check of the request named it."""
    return {
        "group": GROUP,
        "version": VERSION,
        "resource": request.metric.name,
        "namespace": request.namespace,
        "verb": "list",
    }
