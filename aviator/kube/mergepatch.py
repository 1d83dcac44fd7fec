"""JSON merge patches (RFC 7386), the body of Aviator's status writes (pure).

`between(old, new)` is the smallest merge patch that turns `old` into `new`: only the
members that changed, objects diffed member by member, removed members as null;
`replacing(old, new)` sends all of `new` (for when the server may differ from `old`);
`apply(target, patch)` is what the API server does with one. A merge patch cannot set
a member to null, so `new` must hold none (JSON from our models never does).
"""

from __future__ import annotations

from typing import Any

JSON = dict[str, Any]


def between(old: JSON, new: JSON) -> JSON:
    """The merge patch from `old` to `new`: `apply(old, between(old, new)) == new`."""
    patch: JSON = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            inner = between(before, value)
            if inner:
                patch[key] = inner
        elif key not in old or before != value:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


def replacing(old: JSON, new: JSON) -> JSON:
    """A merge patch carrying all of `new`, and null for every member of `old` that `new`
    lacks, at any depth: what to send when the server may hold more than `old` says
    changed (`apply(old, replacing(old, new)) == new` too)."""
    patch: JSON = {}
    for key, value in new.items():
        before = old.get(key)
        patch[key] = (
            replacing(before, value)
            if isinstance(value, dict) and isinstance(before, dict)
            else value
        )
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


def apply(target: Any, patch: Any) -> Any:
    """`patch` merged into `target` as RFC 7386 says (a new value; neither changes)."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply(out.get(key), value)
    return out
