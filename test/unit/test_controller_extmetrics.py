"""The external metrics API's shapes (aviator.controller.extmetrics), a Service's
figures (aviator.controller.servicelatency.figures) and the APIService's caBundle patch
(aviator.controller.metricsapi.ca_bundle_patch): pure."""

from __future__ import annotations

import base64
import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aviator.controller.extmetrics import (
    BASE_PATH,
    GROUP_VERSION,
    METRICS,
    Problem,
    ServiceFigures,
    parse_request,
    quantity,
    resource_attributes,
    resource_list,
    value_list,
)
from aviator.controller.metricsapi import ca_bundle_patch
from aviator.controller.servicelatency import figures
from aviator.latency.histogram import Histogram
from aviator.selection.types import LatencyEstimate

NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
WEB = ServiceFigures("web", "web", 12.0, 250.5, 7, 1.25)
API = ServiceFigures("api", "api-policy", 3.0, None, None, None)


def test_a_metric_answers_one_item_per_matching_service_with_a_known_figure() -> None:
    request = parse_request("shop", "aviator_service_p99_ms", "service=web")
    body = value_list(request, [API, WEB], NOW, 10.0)
    assert body == {
        "kind": "ExternalMetricValueList",
        "apiVersion": "external.metrics.k8s.io/v1beta1",
        "metadata": {},
        "items": [
            {
                "metricName": "aviator_service_p99_ms",
                "metricLabels": {"service": "web", "policy": "web"},
                "timestamp": "2026-01-02T03:04:05Z",
                "window": 10,
                "value": "250500m",
            }
        ],
    }
    # No selector: every Service, but one without a figure has no item (unknown is not 0).
    everything = value_list(
        parse_request("shop", "aviator_service_p99_ms", ""), [API, WEB], NOW, 10
    )
    assert [i["metricLabels"]["service"] for i in everything["items"]] == ["web"]
    p50 = value_list(parse_request("shop", "aviator_service_p50_ms", "!nope"), [WEB, API], NOW, 10)
    assert [(i["metricLabels"]["service"], i["value"]) for i in p50["items"]] == [
        ("api", "3"),
        ("web", "12"),
    ]
    rif = value_list(
        parse_request("shop", "aviator_service_requests_in_flight", "policy=web"), [WEB], NOW, 1
    )
    assert rif["items"][0]["value"] == "7"
    errors = value_list(
        parse_request("shop", "aviator_service_error_rate_percent", ""), [WEB, API], NOW, 1
    )
    assert [i["value"] for i in errors["items"]] == ["1250m"]


def test_discovery_lists_every_metric_namespaced() -> None:
    body = resource_list()
    assert body["kind"] == "APIResourceList" and body["groupVersion"] == GROUP_VERSION
    assert {r["name"] for r in body["resources"]} == set(METRICS)
    assert all(r["namespaced"] and "list" in r["verbs"] for r in body["resources"])
    assert BASE_PATH == "/apis/external.metrics.k8s.io/v1beta1"


@pytest.mark.parametrize(
    ("namespace", "metric", "selector", "code"),
    [
        ("shop", "aviator_nope", "", 404),
        ("Shop", "aviator_service_p99_ms", "", 400),
        ("x" * 64, "aviator_service_p99_ms", "", 400),
        ("shop", "aviator_service_p99_ms", "service<3", 400),
        ("shop", "aviator_service_p99_ms", "service in (a", 400),
    ],
)
def test_requests_for_nothing_served_are_refused(
    namespace: str, metric: str, selector: str, code: int
) -> None:
    with pytest.raises(Problem) as caught:
        parse_request(namespace, metric, selector)
    assert caught.value.code == code
    assert caught.value.body()["kind"] == "Status" and caught.value.body()["code"] == code


@given(st.text(max_size=80), st.text(max_size=80), st.text(max_size=200))
def test_any_request_parses_or_is_refused_with_a_status(ns: str, metric: str, sel: str) -> None:
    try:
        request = parse_request(ns, metric, sel)
    except Problem as exc:
        assert exc.code in (400, 404)
        return
    assert request.metric.name == metric
    assert resource_attributes(request)["verb"] == "list"


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_quantities_keep_milli_precision(value: float) -> None:
    text = quantity(value)
    assert text is not None
    parsed = int(text[:-1]) / 1000 if text.endswith("m") else int(text)
    assert abs(parsed - value) <= 0.0005 + value * 1e-12


def test_what_no_quantity_says_is_none() -> None:
    assert quantity(-1.0) is None and quantity(float("nan")) is None
    assert quantity(float("inf")) is None
    assert quantity(0.0) == "0" and quantity(0.0004) == "0" and quantity(1.5) == "1500m"


def estimate(p99_ms: float, **kw: float) -> LatencyEstimate:
    return LatencyEstimate(p50_ms=p99_ms / 2, p99_ms=p99_ms, **kw)  # type: ignore[arg-type]


def test_figures_merge_requests_not_pods() -> None:
    merged = Histogram()
    merged.record(10_000, 990)  # a fast pod's 990 requests at 10 ms
    merged.record(400_000, 10)  # a slow pod's 10 at 400 ms: 1 % of the Service's
    fig = figures(
        "web",
        "web",
        merged,
        [estimate(10, rif=3, statuses=100, errors=1), estimate(400, rif=2), None],
    )
    assert fig.p99_ms is not None and 9.6 <= fig.p99_ms <= 10.4  # not the max of p99s
    assert fig.p50_ms is not None and 9.6 <= fig.p50_ms <= 10.4
    assert fig.requests_in_flight == 5 and fig.error_rate_percent == 1.0


def test_figures_without_samples() -> None:
    # Nothing fresh at all: nothing known.
    assert figures("web", "web", Histogram(), [None]) == ServiceFigures(
        "web", "web", None, None, None, None
    )
    # No completed request but one open for 3 s: that age is a lower bound.
    hung = figures("web", "web", Histogram(), [estimate(3000, oldest_open_ms=3000.0, rif=1)])
    assert hung.p99_ms == hung.p50_ms == 3000.0 and hung.requests_in_flight == 1
    assert hung.error_rate_percent is None  # no status read: no rate


def test_the_ca_bundle_goes_to_our_apiservice_only() -> None:
    ours = {"spec": {"service": {"namespace": "aviator-system", "name": "metrics"}}}
    patch = ca_bundle_patch(ours, b"CA", "aviator-system", ("metrics",))
    assert patch == {
        "spec": {"caBundle": base64.b64encode(b"CA").decode(), "insecureSkipTLSVerify": None}
    }
    held = {"spec": {**ours["spec"], "caBundle": base64.b64encode(b"CA").decode()}}
    assert ca_bundle_patch(held, b"CA", "aviator-system", ("metrics",)) is None
    keda = {"spec": {"service": {"namespace": "keda", "name": "keda-operator-metrics-apiserver"}}}
    assert ca_bundle_patch(keda, b"CA", "aviator-system", ("metrics",)) is None
    assert ca_bundle_patch({"spec": {}}, b"CA", "aviator-system", ("metrics",)) is None
