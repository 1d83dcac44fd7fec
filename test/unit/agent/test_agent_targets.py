"""Which local pods the policies ask the agent to probe."""

from __future__ import annotations

import json
from typing import Any

from aviator.agent.targets import probe_targets
from aviator.kube.marks import ANNOTATION_ORIGINAL_SELECTOR
from aviator.latency.probing import ProbeTarget


def policy(
    name: str, service: str, *, ns: str = "shop", port: int | None = None, path: str | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"targetRef": {"name": service}}
    if port is not None:
        spec["targetPort"] = port
    if path is not None:
        spec["probePath"] = path
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec}


def service(
    name: str, selector: dict[str, str] | None, *, saved: dict[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "shop"}
    if saved is not None:
        meta["annotations"] = {ANNOTATION_ORIGINAL_SELECTOR: json.dumps(saved)}
    return {"metadata": meta, "spec": {"selector": selector} if selector else {}}


def pod(
    name: str, ip: str, labels: dict[str, str], *, phase: str = "Running", ns: str = "shop"
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {},
        "status": {"phase": phase, "podIP": ip},
    }


SERVICES = {
    ("shop", "web"): service("web", {"app": "web"}),
    ("shop", "api"): service("api", None, saved={"app": "api"}),  # taken over
    ("shop", "empty"): service("empty", None),
}


def lookup(ns: str, name: str) -> dict[str, Any] | None:
    return SERVICES.get((ns, name))


PODS = [
    pod("web-1", "10.0.0.1", {"app": "web"}),
    pod("web-2", "10.0.0.2", {"app": "web"}, phase="Pending"),
    pod("api-1", "10.0.0.3", {"app": "api", "tier": "x"}),
    pod("other", "10.0.0.4", {"app": "other"}),
    pod("web-elsewhere", "10.0.0.5", {"app": "web"}, ns="other"),
]


def test_defaults_and_selection() -> None:
    got = probe_targets([policy("p", "web")], lookup, PODS)
    assert got == {("10.0.0.1", 8080): ProbeTarget("10.0.0.1", 8080, "/", "shop/web-1")}
    assert got["10.0.0.1", 8080].url == "http://10.0.0.1:8080/"


def test_taken_over_service_still_selects_through_the_annotation() -> None:
    got = probe_targets([policy("p", "api", port=9000, path="/healthz")], lookup, PODS)
    assert got == {("10.0.0.3", 9000): ProbeTarget("10.0.0.3", 9000, "/healthz", "shop/api-1")}


def test_unknown_or_selectorless_services_and_bad_specs_give_nothing() -> None:
    for p in (
        policy("p", "missing"),
        policy("p", "empty"),
        policy("p", "web", port=0),
        policy("p", "web", path="nope"),
        {"metadata": {"name": "p", "namespace": "shop"}, "spec": {}},
    ):
        assert probe_targets([p], lookup, PODS) == {}


def test_first_policy_by_key_chooses_the_path() -> None:
    got = probe_targets(
        [policy("b", "web", path="/b"), policy("a", "web", path="/a")], lookup, PODS
    )
    assert got["10.0.0.1", 8080].path == "/a"


def test_ipv6_url() -> None:
    assert ProbeTarget("fd00::1", 80, "/x", "ns/p").url == "http://[fd00::1]:80/x"


def probed_pod(containers: list[dict[str, Any]], started: list[str] | None = None) -> Any:
    statuses = [{"name": n, "started": True} for n in started or []]
    return {"spec": {"containers": containers}, "status": {"containerStatuses": statuses}}
