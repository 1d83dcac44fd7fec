"""metadata.managedFields dropped from watch lines (aviator.kube.managedfields): the
decoded event is always the whole event less metadata.managedFields, whatever the
bytes; the cut before decoding happens only where the bytes prove it is that array."""

from __future__ import annotations

import copy
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.kube.managedfields import (
    decode_without_managed_fields,
    drop_managed_fields,
    line_without_managed_fields,
)
from aviator.kube.pods import is_eligible, is_ready, pod_ips, pod_node

JSON = dict[str, Any]

MANAGED = [
    {
        "manager": "kube-controller-manager",
        "operation": "Update",
        "apiVersion": "v1",
        "time": "2026-12-02T21:59:35Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": {
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {"f:containers": {'k:{"name":"app"}': {".": {}, "f:image": {}}}},
        },
    },
    {
        "manager": "kubelet",
        "operation": "Update",
        "apiVersion": "v1",
        "time": "2026-12-02T21:59:36Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:status": {"f:podIPs": {'k:{"ip":"10.244.1.17"}': {".": {}}}}},
        "subresource": "status",
    },
]


def pod(managed: list[JSON] | None = MANAGED) -> JSON:
    """A Pod in the API server's field order (as a watch of a real one delivers it)."""
    meta: JSON = {
        "name": "checkout-5d9c7b8f6d-ncdzn",
        "generateName": "checkout-5d9c7b8f6d-",
        "namespace": "shop",
        "uid": "948aab32-b9b9-4290-8a95-a16009d3c6e6",
        "resourceVersion": "203",
        "creationTimestamp": "2026-12-02T21:59:35Z",
        "labels": {"app": "checkout", "pod-template-hash": "5d9c7b8f6d"},
        "annotations": {"note": 'a "quoted" ] value with "managedFields":[ in it'},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs"}],
    }
    if managed is not None:
        meta["managedFields"] = copy.deepcopy(managed)
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": meta,
        "spec": {
            "nodeName": "node-7",
            "containers": [
                {
                    "name": "app",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                }
            ],
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "podIP": "10.244.1.17",
            "podIPs": [{"ip": "10.244.1.17"}],
            "containerStatuses": [{"name": "app", "ready": True, "started": True}],
        },
    }


def line_of(obj: JSON, kind: str = "MODIFIED") -> bytes:
    return orjson.dumps({"type": kind, "object": obj})


def without(obj: JSON) -> JSON:
    out = copy.deepcopy(obj)
    out["metadata"].pop("managedFields", None)
    return out


def test_a_pods_managed_fields_are_cut_before_decoding_and_nothing_else_is() -> None:
    full = pod()
    line = line_of(full)
    cut = line_without_managed_fields(line)
    assert b"managedFields" not in cut.replace(b'\\"managedFields\\":[', b"")
    assert len(line) - len(cut) == len(b',"managedFields":' + orjson.dumps(MANAGED))
    event = decode_without_managed_fields(line)
    assert event == {"type": "MODIFIED", "object": without(full)}
    # What the controller and the agent read of a pod reads the same.
    got = event["object"]
    for read in (is_ready, is_eligible, pod_ips, pod_node):
        assert read(got) == read(full)
    assert got["spec"] == full["spec"] and got["status"] == full["status"]
    assert got["metadata"]["labels"] == full["metadata"]["labels"]


def test_a_custom_resource_in_sorted_key_order_is_cut() -> None:
    policy = {
        "apiVersion": "aviator.example.com/v1alpha1",
        "kind": "AviatorPolicy",
        "metadata": {
            "creationTimestamp": "2026-12-02T21:59:35Z",
            "generation": 1,
            "managedFields": MANAGED,
            "name": "p",
            "namespace": "shop",
            "resourceVersion": "9",
        },
        "spec": {"targetRef": {"name": "web"}},
    }
    line = line_of(policy)
    assert len(line_without_managed_fields(line)) < len(line)
    assert decode_without_managed_fields(line)["object"] == without(policy)


def test_a_managed_fields_key_outside_metadata_is_left_alone() -> None:
    # A custom resource whose metadata has none (cleared), with a field of that name
    # further on: the bytes before it are not balanced, so nothing is cut.
    obj = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "namespace": "shop", "resourceVersion": "3"},
        "spec": {"x": 1, "managedFields": [{"keep": "me"}]},
    }
    line = line_of(obj)
    assert line_without_managed_fields(line) is line
    assert decode_without_managed_fields(line)["object"] == obj


def test_a_bracket_inside_a_managed_fields_string_stops_the_cut() -> None:
    odd = copy.deepcopy(MANAGED)
    odd[0]["manager"] = 'tool],"x":1}]}'
    odd[1]["fieldsV1"] = {"f:status": {"f:a]},b": {}}}
    full = pod(odd)
    line = line_of(full)
    assert line_without_managed_fields(line) is line
    assert decode_without_managed_fields(line)["object"] == without(full)


def test_a_nested_array_makes_the_cut_fail_to_decode_and_the_whole_line_is_decoded() -> None:
    odd = copy.deepcopy(MANAGED)
    odd[0]["fieldsV1"] = {"f:x": [1, 2]}  # not what a server writes; still decoded right
    full = pod(odd)
    line = line_of(full)
    assert decode_without_managed_fields(line)["object"] == without(full)


def test_managed_fields_first_in_metadata_is_not_cut_but_still_dropped() -> None:
    line = (
        b'{"type":"ADDED","object":{"kind":"Pod","apiVersion":"v1","metadata":'
        b'{"managedFields":[{"manager":"m"}],"name":"a","namespace":"b"}}}'
    )
    assert line_without_managed_fields(line) is line
    event = decode_without_managed_fields(line)
    assert event["object"]["metadata"] == {"name": "a", "namespace": "b"}


def test_lines_of_other_shapes_are_decoded_whole() -> None:
    bookmark = line_of({"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "7"}})
    status = line_of(
        {"kind": "Status", "apiVersion": "v1", "metadata": {}, "code": 410, "reason": "Expired"},
        "ERROR",
    )
    spaced = b'{"type": "ADDED", "object": {"kind": "Pod", "metadata": {"managedFields": []}}}'
    for line in (bookmark, status, spaced, line_of(pod(None))):
        assert line_without_managed_fields(line) is line
        assert decode_without_managed_fields(line) == without_event(orjson.loads(line))


def without_event(event: JSON) -> JSON:
    event = copy.deepcopy(event)
    drop_managed_fields(event["object"])
    return event


def test_drop_managed_fields_removes_only_that() -> None:
    full = pod()
    assert drop_managed_fields(copy.deepcopy(full)) == without(full)
    assert drop_managed_fields({"kind": "Status"}) == {"kind": "Status"}


# Arbitrary objects: text with quotes, brackets, backslashes and the key itself in it.
_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(['"managedFields":[', "]", "],", '"]},"a', "\\", '\\"', "}]}}}", "k:{"]),
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=12,
)
_fields = st.recursive(st.just({}), lambda inner: st.dictionaries(_text, inner, max_size=3))
_entries = st.lists(
    st.fixed_dictionaries(
        {"manager": _text, "operation": st.just("Update"), "fieldsV1": _fields},
        optional={"subresource": _text, "extra": _json},
    ),
    max_size=3,
)


@st.composite
def objects(draw: st.DrawFn) -> JSON:
    api_version, kind = draw(
        st.sampled_from([("v1", "Pod"), ("example.com/v1", "Pod"), ("example.com/v1", "W")])
    )
    meta: JSON = {"name": draw(_text), "namespace": "ns"}
    meta.update(draw(st.dictionaries(st.sampled_from(["labels", "annotations"]), _json)))
    if draw(st.booleans()):
        meta["managedFields"] = draw(_entries)
    meta.update(draw(st.dictionaries(st.sampled_from(["uid", "finalizers"]), _json)))
    # A built-in type's schema has no other field of that name (the server decodes it
    # into its Go type, dropping unknown fields); a custom resource's may.
    fields = (
        ["spec", "status"]
        if (api_version, kind) == ("v1", "Pod")
        else ["spec", "status", "managedFields"]
    )
    rest = draw(st.dictionaries(st.sampled_from(fields), _json))
    if draw(st.booleans()):  # a custom resource's sorted keys
        return {"apiVersion": api_version, "kind": kind, "metadata": meta, **rest}
    return {"kind": kind, "apiVersion": api_version, "metadata": meta, **rest}


@settings(max_examples=400)
@given(objects(), st.sampled_from(["ADDED", "MODIFIED", "DELETED"]))
def test_decoding_without_managed_fields_is_decoding_then_dropping(obj: JSON, kind: str) -> None:
    line = line_of(obj, kind)
    want = {"type": kind, "object": without(obj)}
    assert decode_without_managed_fields(line) == want
    # As a watch decodes it: a line among others in one chunk, read in place.
    chunk = b'{"type":"ADDED"}\n' + line + b'\n{"type":"MODIFIED","object":{}}}]'
    start = chunk.index(b"\n") + 1
    assert decode_without_managed_fields(chunk, start, start + len(line)) == want
