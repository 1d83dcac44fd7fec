"""Finding a Service's pods through the pod label index."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from aviator.informers import Indexer, object_key
from aviator.kube.objects import selector_matches
from aviator.reconcilers.podindex import POD_INDEXERS, selected_pods

LABEL_VALUES = st.sampled_from(["a", "b", "c"])
LABELS = st.dictionaries(st.sampled_from(["app", "tier", "zone"]), LABEL_VALUES, max_size=3)


def pod(name: str, labels: dict[str, str], ns: str = "shop") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "labels": labels}}


@given(
    pods=st.lists(st.tuples(st.sampled_from(["shop", "other"]), LABELS), max_size=30),
    selector=LABELS,
    later=st.lists(st.tuples(st.integers(0, 29), LABELS), max_size=10),
)
def test_index_lookup_equals_a_scan_of_the_namespace(
    pods: list[tuple[str, dict[str, str]]],
    selector: dict[str, str],
    later: list[tuple[int, dict[str, str]]],
) -> None:
    store = Indexer(POD_INDEXERS)
    objects = [pod(f"p{i}", labels, ns) for i, (ns, labels) in enumerate(pods)]
    for obj in objects:
        store.upsert(obj)
    for i, labels in later:  # relabelled pods move in the index
        if i < len(objects):
            objects[i] = pod(f"p{i}", labels, objects[i]["metadata"]["namespace"])
            store.upsert(objects[i])
    expected = sorted(
        (
            o
            for o in objects
            if o["metadata"]["namespace"] == "shop"
            and selector_matches(selector, o["metadata"]["labels"])
        ),
        key=object_key,
    )
    assert selected_pods(store, "shop", selector) == expected


def test_empty_selector_selects_nothing() -> None:
    store = Indexer(POD_INDEXERS)
    store.upsert(pod("p", {"app": "a"}))
    assert selected_pods(store, "shop", {}) == []
