"""The box's node selection: nodeSelector and required node affinity by node name, as
the scheduler filters them (DaemonSet pods name their node in matchFields)."""

from __future__ import annotations

from typing import Any

from aviator.box.scheduling import HOSTNAME, eligible_nodes

NODES = ["box-node-1", "box-node-2", "box-real-1"]


def affinity(*terms: dict[str, Any]) -> dict[str, Any]:
    return {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}
            }
        }
    }


def test_a_pod_without_node_selection_may_go_anywhere() -> None:
    assert eligible_nodes({}, NODES) == NODES
    # What the box does not model holds everywhere.
    assert eligible_nodes({"nodeSelector": {"kubernetes.io/os": "linux"}}, NODES) == NODES


def test_a_daemonset_pod_goes_to_its_node_only() -> None:
    term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["box-real-1"]}]}
    assert eligible_nodes(affinity(term), NODES) == ["box-real-1"]
    assert eligible_nodes(affinity(term), ["box-node-1"]) == []


def test_hostname_selector_and_expressions() -> None:
    assert eligible_nodes({"nodeSelector": {HOSTNAME: "box-node-2"}}, NODES) == ["box-node-2"]
    not_real = {
        "matchExpressions": [{"key": HOSTNAME, "operator": "NotIn", "values": ["box-real-1"]}]
    }
    assert eligible_nodes(affinity(not_real), NODES) == ["box-node-1", "box-node-2"]


def test_terms_are_ored_and_an_empty_term_matches_nothing() -> None:
    one = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["box-node-1"]}]}
    two = {"matchExpressions": [{"key": HOSTNAME, "operator": "In", "values": ["box-node-2"]}]}
    assert eligible_nodes(affinity(one, two), NODES) == ["box-node-1", "box-node-2"]
    assert eligible_nodes(affinity({}), NODES) == []
