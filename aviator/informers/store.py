"""The informer cache: objects by key plus named secondary indexes (client-go's Indexer).

Pure data structure, no I/O and no locks: an informer mutates it from one asyncio task,
and every method runs to completion without yielding, so readers never see a half-applied
change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from aviator.informers.keys import JSON, DeletedFinalStateUnknown, object_key, resource_version

IndexFunc = Callable[[JSON], list[str]]
"""Maps an object to the index values it is filed under (may be empty)."""

NAMESPACE_INDEX = "namespace"

# Aliases: inside Indexer, `list` is a method name.
Objects = list[JSON]
Keys = list[str]


def namespace_index(obj: JSON) -> list[str]:
    """Index function filing objects under their namespace (none for cluster-scoped)."""
    namespace = (obj.get("metadata") or {}).get("namespace")
    return [str(namespace)] if namespace else []


@dataclass
class ReplaceDiff:
    """What a Replace changed: the notifications an informer owes its handlers."""

    added: list[JSON] = field(default_factory=list)
    updated: list[tuple[JSON, JSON]] = field(default_factory=list)  # (old, new)
    deleted: list[DeletedFinalStateUnknown] = field(default_factory=list)


class Indexer:
    """Objects keyed by object_key, with named indexes kept up to date on every change."""

    def __init__(self, indexers: Mapping[str, IndexFunc] | None = None) -> None:
        self._items: dict[str, JSON] = {}
        self._index_funcs: dict[str, IndexFunc] = {}
        # index name → index value → keys filed under it
        self._indices: dict[str, dict[str, set[str]]] = {}
        # Bumped by every change (an object stored or removed, an index added): a reader
        # that saw the same count saw the same cache, without a look at its objects.
        self.mutations = 0
        if indexers:
            self.add_indexers(indexers)

    # Reads.

    def get(self, key: str) -> JSON | None:
        return self._items.get(key)

    def get_by_object(self, obj: JSON) -> JSON | None:
        return self._items.get(object_key(obj))

    def list(self) -> Objects:
        return list(self._items.values())

    def keys(self) -> Keys:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def by_index(self, index_name: str, value: str) -> Objects:
        """Objects filed under `value` in the named index (KeyError for an unknown index)."""
        return [self._items[k] for k in self.index_keys(index_name, value)]

    def index_size(self, index_name: str, value: str) -> int:
        """How many objects are filed under `value` (cheaper than listing them)."""
        return len(self._index(index_name).get(value, ()))

    def index_keys(self, index_name: str, value: str) -> Keys:
        return sorted(self._index(index_name).get(value, ()))

    def index_values(self, index_name: str) -> Keys:
        """Every value that currently has at least one object in the named index."""
        return sorted(self._index(index_name))

    def indexer_names(self) -> Keys:
        return list(self._index_funcs)

    def _index(self, index_name: str) -> dict[str, set[str]]:
        try:
            return self._indices[index_name]
        except KeyError:
            raise KeyError(f"no index named {index_name!r}") from None

    # Index maintenance.

    def add_indexers(self, indexers: Mapping[str, IndexFunc]) -> None:
        """Add named indexes, also once the cache is populated (built over current items).

        Re-registering an existing name is an error: silently replacing a function would
        leave the old function's entries behind.
        """
        clash = set(indexers) & set(self._index_funcs)
        if clash:
            raise ValueError(f"indexers already registered: {sorted(clash)}")
        self.mutations += 1
        for name, func in indexers.items():
            self._index_funcs[name] = func
            index: dict[str, set[str]] = {}
            for key, obj in self._items.items():
                for value in func(obj):
                    index.setdefault(value, set()).add(key)
            self._indices[name] = index

    def _unindex(self, key: str, obj: JSON) -> None:
        for name, func in self._index_funcs.items():
            index = self._indices[name]
            for value in func(obj):
                keys = index.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[value]

    def _reindex(self, key: str, obj: JSON) -> None:
        for name, func in self._index_funcs.items():
            index = self._indices[name]
            for value in func(obj):
                index.setdefault(value, set()).add(key)

    # Writes.

    def upsert(self, obj: JSON) -> JSON | None:
        """Store obj under its key; return the object it replaced (None if new)."""
        key = object_key(obj)
        old = self._items.get(key)
        self._items[key] = obj
        self.mutations += 1
        if old is None:
            self._reindex(key, obj)
            return None
        for name, func in self._index_funcs.items():
            before, after = func(old), func(obj)
            if before == after:
                continue  # the usual case: an update that does not move the object
            index = self._indices[name]
            for value in before:
                keys = index.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[value]
            for value in after:
                index.setdefault(value, set()).add(key)
        return old

    def delete(self, key: str) -> JSON | None:
        """Remove the key; return what was stored (None if absent)."""
        old = self._items.pop(key, None)
        if old is not None:
            self.mutations += 1
            self._unindex(key, old)
        return old

    def replace(self, items: Iterable[JSON]) -> ReplaceDiff:
        """Make the cache hold exactly `items`, and say what changed.

        Objects whose resourceVersion is unchanged are kept as they are and not reported
        (a relist re-delivers nothing that did not change). Keys that vanished are reported as
        DeletedFinalStateUnknown tombstones carrying their last known state.
        """
        diff = ReplaceDiff()
        fresh: dict[str, JSON] = {}
        for obj in items:
            fresh[object_key(obj)] = obj
        for key in [k for k in self._items if k not in fresh]:
            old = self.delete(key)
            assert old is not None
            diff.deleted.append(DeletedFinalStateUnknown(key, old))
        for key, obj in fresh.items():
            old = self._items.get(key)
            if old is not None and resource_version(obj) == resource_version(old) != "":
                # Unchanged: keep the very object handlers were given, so the next
                # update's `old` is what they saw.
                continue
            self.upsert(obj)
            if old is None:
                diff.added.append(obj)
            else:
                diff.updated.append((old, obj))
        return diff
