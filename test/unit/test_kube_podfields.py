"""The controller's Pod projection (aviator.kube.podfields) keeps what its readers read:
every reader listed in that module answers the same on a projected Pod, listed or
watched, as on the whole Pod the API server sent."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aviator.controller.agents import _place, index_pod_ip
from aviator.kube import pods
from aviator.kube.podfields import CONTROLLER_POD
from aviator.reconcilers.endpoints import Publishing, desired_endpoints, resolve_ports
from aviator.reconcilers.handoff import _handed_off
from aviator.reconcilers.podfacts import pod_facts
from aviator.reconcilers.podindex import index_pod_labels

JSON = dict[str, Any]

_name = st.sampled_from(["", "a", "http", "metrics", "web-1"])
_port = st.fixed_dictionaries(
    {"containerPort": st.integers(1, 65535)},
    optional={"name": _name, "protocol": st.sampled_from(["TCP", "UDP", "SCTP"])},
)
_container = st.fixed_dictionaries(
    {"name": _name},
    optional={
        "ports": st.lists(_port, max_size=3),
        "restartPolicy": st.sampled_from(["Always", "Never"]),
        # What the controller never reads, and the projection leaves out.
        "image": st.just("registry.example/app:1"),
        "env": st.just([{"name": "A", "value": "b"}]),
        "readinessProbe": st.just({"httpGet": {"path": "/healthz", "port": "http"}}),
        "resources": st.just({"requests": {"cpu": "100m"}}),
    },
)
_ip = st.sampled_from(["10.0.0.1", "10.0.0.2", "fd00::1", "not-an-ip", ""])
_condition = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["Ready", "ContainersReady", "PodScheduled"]),
        "status": st.sampled_from(["True", "False", "Unknown"]),
    },
    optional={"lastTransitionTime": st.just("2026-12-03T10:00:00Z")},
)
_pod = st.fixed_dictionaries(
    {
        "kind": st.just("Pod"),
        "apiVersion": st.just("v1"),
        "metadata": st.fixed_dictionaries(
            {"name": _name, "namespace": st.sampled_from(["default", "shop"])},
            optional={
                "uid": st.uuids().map(str),
                "resourceVersion": st.integers(1, 10**9).map(str),
                "creationTimestamp": st.sampled_from(["2026-12-03T10:00:00Z", "junk"]),
                "deletionTimestamp": st.just("2026-12-03T11:00:00Z"),
                "labels": st.dictionaries(_name, _name, max_size=3),
                "annotations": st.dictionaries(_name, _name, max_size=2),
                "managedFields": st.just([{"manager": "kubelet", "fieldsV1": {}}]),
            },
        ),
        "spec": st.fixed_dictionaries(
            {"containers": st.lists(_container, min_size=1, max_size=3)},
            optional={
                "nodeName": st.sampled_from(["", "node-1", "node-2"]),
                "hostNetwork": st.booleans(),
                "hostname": _name,
                "subdomain": st.sampled_from(["web", "other"]),
                "initContainers": st.lists(_container, max_size=2),
                "volumes": st.just([{"name": "data", "emptyDir": {}}]),
                "tolerations": st.just([{"key": "k", "operator": "Exists"}]),
            },
        ),
        "status": st.fixed_dictionaries(
            {},
            optional={
                "phase": st.sampled_from(["Pending", "Running", "Succeeded", "Failed"]),
                "conditions": st.lists(_condition, max_size=3),
                "podIP": _ip,
                "podIPs": st.lists(st.fixed_dictionaries({"ip": _ip}), max_size=2),
                "containerStatuses": st.just([{"name": "app", "ready": True}]),
            },
        ),
    },
)
_service = st.fixed_dictionaries(
    {
        "metadata": st.just({"name": "web", "namespace": "default"}),
        "spec": st.fixed_dictionaries(
            {
                "ports": st.lists(
                    st.fixed_dictionaries(
                        {"port": st.integers(1, 65535)},
                        optional={
                            "name": _name,
                            "targetPort": st.integers(1, 65535) | _name,
                            "protocol": st.sampled_from(["TCP", "UDP"]),
                        },
                    ),
                    max_size=3,
                )
            },
            optional={"publishNotReadyAddresses": st.booleans()},
        ),
    }
)


def _projected(pod: JSON) -> tuple[JSON, JSON]:
    """(as a watch gives it, as a list gives it)."""
    line = orjson.dumps({"type": "MODIFIED", "object": pod})
    watched = CONTROLLER_POD.decode_event(line)["object"]
    listed = CONTROLLER_POD.project(orjson.loads(orjson.dumps(pod)))
    return watched, listed


def _answers(pod: JSON, service: JSON) -> dict[str, Any]:
    facts = asdict(pod_facts(pod))
    del facts["pod"]
    return {
        "name": pods.pod_name(pod),
        "node": pods.pod_node(pod),
        "terminating": pods.is_terminating(pod),
        "ready": pods.is_ready(pod),
        "eligible": pods.is_eligible(pod),
        "ips": pods.pod_ips(pod),
        "facts": facts,
        "labels index": index_pod_labels(pod),
        "ip index": index_pod_ip(pod),
        "place": _place(pod),
        "handed off": _handed_off(pod),
        "ports": resolve_ports(service, pod),
        "endpoints": desired_endpoints(Publishing(service, "web"), [pod]),
    }


_SIDECAR_POD = {
    "metadata": {"name": "a", "namespace": "default"},
    "spec": {
        "containers": [{"name": "app"}],
        "initContainers": [
            {
                "name": "proxy",
                "restartPolicy": "Always",
                "ports": [{"name": "http", "containerPort": 81}],
            }
        ],
        "hostname": "a",
        "subdomain": "web",
    },
    "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.1"}]},
}
_NAMED_SERVICE = {"spec": {"ports": [{"port": 80, "targetPort": "http"}]}}


@settings(max_examples=300)
@given(_pod, _service)
@example(_SIDECAR_POD, _NAMED_SERVICE)  # a port only a sidecar names
def test_every_reader_answers_alike_on_the_projection(pod: JSON, service: JSON) -> None:
    whole = _answers(pod, service)
    watched, listed = _projected(pod)
    assert watched == listed
    assert _answers(watched, service) == whole


@settings(max_examples=50)
@given(_pod)
def test_the_projection_leaves_out_what_no_reader_reads(pod: JSON) -> None:
    pod["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    pod["status"]["containerStatuses"] = [{"name": "app"}]
    pod["metadata"]["managedFields"] = [{"manager": "kubelet"}]
    watched, _ = _projected(pod)
    assert "volumes" not in watched["spec"]
    assert "containerStatuses" not in watched["status"]
    assert "managedFields" not in watched["metadata"]
    assert all(set(c) <= {"name", "ports", "restartPolicy"} for c in watched["spec"]["containers"])
