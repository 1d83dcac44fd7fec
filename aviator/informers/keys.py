"""Cache keys of API objects and the delete tombstone, as in client-go's tools/cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]


def object_key(obj: JSON | DeletedFinalStateUnknown) -> str:
    """ "namespace/name" for namespaced objects, "name" for cluster-scoped ones.

    A tombstone's key is the key it was recorded under.
    """
    if isinstance(obj, DeletedFinalStateUnknown):
        return obj.key
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not name:
        raise ValueError("object has no metadata.name")
    namespace = meta.get("namespace")
    return f"{namespace}/{name}" if namespace else str(name)


def split_key(key: str) -> tuple[str | None, str]:
    """The inverse of object_key: (namespace or None, name)."""
    namespace, sep, name = key.partition("/")
    return (namespace, name) if sep else (None, key)


def resource_version(obj: JSON) -> str:
    """metadata.resourceVersion, or "" when the object carries none."""
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


@dataclass(frozen=True)
class DeletedFinalStateUnknown:
    """An object that vanished while we were not watching.

    Delivered to on_delete when a relist no longer contains a key the cache held: the
    delete itself was never seen, so `obj` is the last state we knew, possibly stale.
    """

    key: str
    obj: JSON


def unwrap_tombstone(obj: JSON | DeletedFinalStateUnknown) -> JSON:
    """The object itself, or the last known state inside a tombstone."""
    return obj.obj if isinstance(obj, DeletedFinalStateUnknown) else obj
