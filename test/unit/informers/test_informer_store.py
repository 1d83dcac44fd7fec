"""Indexer: keys, indexes kept exact through any change sequence, Replace diffs."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.informers import (
    NAMESPACE_INDEX,
    DeletedFinalStateUnknown,
    Indexer,
    namespace_index,
    object_key,
    split_key,
    unwrap_tombstone,
)

JSON = dict[str, Any]


def pod(name: str, ns: str | None = "default", node: str = "", rv: int = 1) -> JSON:
    meta: JSON = {"name": name, "resourceVersion": str(rv)}
    if ns:
        meta["namespace"] = ns
    return {"metadata": meta, "spec": {"nodeName": node}}


def by_node(obj: JSON) -> list[str]:
    node = obj["spec"].get("nodeName")
    return [node] if node else []


def test_object_key_namespaced_cluster_scoped_and_tombstone() -> None:
    assert object_key(pod("a", "ns1")) == "ns1/a"
    assert object_key(pod("n1", None)) == "n1"
    tomb = DeletedFinalStateUnknown("ns1/a", pod("a", "ns1"))
    assert object_key(tomb) == "ns1/a"
    assert unwrap_tombstone(tomb) == pod("a", "ns1")
    assert split_key("ns1/a") == ("ns1", "a")
    assert split_key("n1") == (None, "n1")
    with pytest.raises(ValueError):
        object_key({"metadata": {}})


def test_index_follows_updates_and_deletes() -> None:
    idx = Indexer({"node": by_node})
    idx.upsert(pod("a", node="n1"))
    idx.upsert(pod("b", node="n1"))
    assert [object_key(o) for o in idx.by_index("node", "n1")] == ["default/a", "default/b"]
    old = idx.upsert(pod("a", node="n2", rv=2))
    assert old is not None and old["spec"]["nodeName"] == "n1"
    assert idx.index_keys("node", "n1") == ["default/b"]
    assert idx.index_keys("node", "n2") == ["default/a"]
    assert idx.delete("default/b") is not None
    assert idx.index_values("node") == ["n2"]
    assert idx.delete("default/b") is None
    with pytest.raises(KeyError):
        idx.by_index("nope", "x")


def test_add_indexers_after_items_builds_over_existing() -> None:
    idx = Indexer()
    idx.upsert(pod("a", "ns1", node="n1"))
    idx.upsert(pod("b", "ns2", node="n1"))
    idx.add_indexers({"node": by_node, NAMESPACE_INDEX: namespace_index})
    assert idx.index_keys("node", "n1") == ["ns1/a", "ns2/b"]
    assert idx.index_keys(NAMESPACE_INDEX, "ns2") == ["ns2/b"]
    with pytest.raises(ValueError):
        idx.add_indexers({"node": by_node})


def test_replace_reports_adds_changed_updates_and_tombstones() -> None:
    idx = Indexer({"node": by_node})
    idx.upsert(pod("keep", rv=1))
    idx.upsert(pod("change", rv=1, node="n1"))
    idx.upsert(pod("gone", rv=1, node="n1"))
    diff = idx.replace([pod("keep", rv=1), pod("change", rv=5, node="n2"), pod("new", rv=6)])
    assert [object_key(o) for o in diff.added] == ["default/new"]
    assert [(object_key(o), object_key(n)) for o, n in diff.updated] == [
        ("default/change", "default/change")
    ]
    assert diff.deleted == [DeletedFinalStateUnknown("default/gone", pod("gone", rv=1, node="n1"))]
    assert sorted(idx.keys()) == ["default/change", "default/keep", "default/new"]
    assert idx.index_keys("node", "n1") == []
    assert idx.index_keys("node", "n2") == ["default/change"]


# Property: whatever happens, the cache and its indexes equal a fresh build.

names = st.sampled_from(["a", "b", "c", "d", "e"])
namespaces = st.sampled_from(["x", "y"])
# As on a real server, one resourceVersion of one object always has the same content.
objects = st.builds(
    lambda n, ns, rv: pod(n, ns, ["", "n1", "n2", "n3"][(rv + len(ns)) % 4], rv),
    names,
    namespaces,
    st.integers(1, 4),
)
ops = st.one_of(
    st.tuples(st.just("upsert"), objects),
    st.tuples(st.just("delete"), st.builds(lambda n, ns: f"{ns}/{n}", names, namespaces)),
    st.tuples(st.just("replace"), st.lists(objects, max_size=8)),
    st.tuples(st.just("add_index"), st.just(None)),
)


def expected_index(items: dict[str, JSON]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for key, obj in items.items():
        for value in by_node(obj):
            out.setdefault(value, set()).add(key)
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=30))
def test_indexes_always_match_a_rebuild(steps: list[tuple[str, Any]]) -> None:
    """Indexes match a rebuild after every step, and a step that leaves the change
    count (`mutations`) as it was changed nothing a reader sees."""
    idx = Indexer({NAMESPACE_INDEX: namespace_index})
    model: dict[str, JSON] = {}
    has_node_index = False

    def seen() -> tuple[object, ...]:
        """What a reader of the cache can see: objects by identity, every index."""
        objects = {object_key(o): id(o) for o in idx.list()}
        indexes = {
            n: {v: idx.index_keys(n, v) for v in idx.index_values(n)} for n in idx.indexer_names()
        }
        return objects, indexes

    for op, arg in steps:
        count, before = idx.mutations, seen()
        if op == "upsert":
            assert idx.upsert(arg) == model.get(object_key(arg))
            model[object_key(arg)] = arg
        elif op == "delete":
            assert idx.delete(arg) == model.pop(arg, None)
        elif op == "replace":
            fresh = {object_key(o): o for o in arg}
            diff = idx.replace(arg)
            assert {t.key for t in diff.deleted} == set(model) - set(fresh)
            assert all(t.obj == model[t.key] for t in diff.deleted)
            assert {object_key(o) for o in diff.added} == set(fresh) - set(model)
            changed = {
                k
                for k in set(fresh) & set(model)
                if fresh[k]["metadata"]["resourceVersion"]
                != model[k]["metadata"]["resourceVersion"]
            }
            assert {object_key(n) for _, n in diff.updated} == changed
            model = fresh
        elif not has_node_index:
            idx.add_indexers({"node": by_node})
            has_node_index = True
        if idx.mutations == count:  # an unchanged count: nothing a reader sees changed
            assert seen() == before
        assert sorted(idx.keys()) == sorted(model)
        assert all(idx.get(k) == v for k, v in model.items())
        for ns in ("x", "y"):
            assert set(idx.index_keys(NAMESPACE_INDEX, ns)) == {
                k for k in model if k.startswith(f"{ns}/")
            }
        if has_node_index:
            want = expected_index(model)
            assert idx.index_values("node") == sorted(want)
            for value, keys in want.items():
                assert set(idx.index_keys("node", value)) == keys
