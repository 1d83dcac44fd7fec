"""Dropping metadata.managedFields: from a decoded object, and from a watch line before
it is decoded.

managedFields (server-side apply's record of which manager set which field) is two
fifths of a Pod's JSON as a cluster writes it and two thirds of its decoded containers,
and nothing Aviator runs reads it. Caches drop it, as controller-runtime's default cache
transform does; doing it before decoding also saves decoding it (docs/benchmarks.md,
informer).

`line_without_managed_fields` cuts `,"managedFields":[...]` out of one watch line as
the API server writes it: `{"type":..,"object":{"kind":..,"apiVersion":..,"metadata":{`
(kind and apiVersion in either order: built-in types in their Go field order, custom
resources with sorted keys). It cuts only what the bytes prove to be metadata's own
managedFields array, whole:

- The key is the first `"managedFields":[` after the object's `"metadata":{`. It is
  metadata's own if the object's kind has no other field of that name (TRUSTED_KINDS,
  one ObjectMeta and no such field anywhere else), else if the bytes before it,
  strings aside, are balanced brackets (not inside a nested object, nor past
  metadata's end: an object without managedFields may have such a key elsewhere).
- The cut ends at the first `]` after the key, and only if what follows is what
  follows managedFields (`},"` and a letter: the next top-level field, Go order;
  `,"` and a letter: metadata's next key, sorted order; `}}}` and the line's end).
  That proves the `]` is outside any string: inside one, the `"` after `,` would end
  the string, and a string is never followed by a letter. managedFields holds objects
  of strings and objects only, so that `]` is the array's end; were it a nested
  array's, the line left would have unbalanced brackets and no longer decode, and
  `decode_without_managed_fields` decodes the whole line instead.

Anything else (another shape of line, no such key) leaves the line whole.
"""

from __future__ import annotations

import re

import orjson

from aviator.kube.objects import JSON

KEY = b'"managedFields":['
# The start of a watch event line up to the inside of its object's metadata.
_HEAD = re.compile(
    rb'\{"type":"[A-Z]+","object":\{(?:'
    rb'"kind":"(?P<k1>[^"\\]*)","apiVersion":"(?P<v1>[^"\\]*)"|'
    rb'"apiVersion":"(?P<v2>[^"\\]*)","kind":"(?P<k2>[^"\\]*)"'
    rb'),"metadata":\{'
)
# What follows metadata.managedFields' closing bracket (see the module docstring).
_AFTER = re.compile(rb'\]\}?,"[A-Za-z]|\]\}\}\}\Z')
# (apiVersion, kind) of types with one ObjectMeta and no other field named managedFields.
TRUSTED_KINDS = frozenset(
    {
        (b"v1", b"Pod"),
        (b"v1", b"Service"),
        (b"v1", b"Endpoints"),
        (b"v1", b"Node"),
        (b"v1", b"Namespace"),
        (b"v1", b"ConfigMap"),
        (b"v1", b"Secret"),
        (b"v1", b"ServiceAccount"),
        (b"discovery.k8s.io/v1", b"EndpointSlice"),
        (b"coordination.k8s.io/v1", b"Lease"),
    }
)
_BRACKETS = b"{}[]"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
# ObjectMeta nests two deep (ownerReferences: [{...}]); deeper means something else.
_MAX_DEPTH = 4


def drop_managed_fields(obj: JSON) -> JSON:
    """obj without metadata.managedFields (removed in place; obj is returned)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return obj


def _unescaped(raw: bytes) -> bytes:
    """raw without its escape sequences' backslashes and escaped quotes, so that what
    is left has a `"` exactly where the JSON has a string's start or end."""
    if b"\\" not in raw:
        return raw
    return raw.replace(b"\\\\", b"").replace(b'\\"', b"")


def _balanced(raw: bytes) -> bool:
    """The brackets outside strings in raw (which starts outside a string) close
    in order and all close: raw stays at the nesting level it starts at."""
    parts = _unescaped(raw).split(b'"')
    if len(parts) % 2 == 0:
        return False  # ends inside a string
    brackets = b"".join(parts[0::2]).translate(None, _NOT_BRACKETS)
    for _ in range(_MAX_DEPTH):
        if not brackets:
            return True
        brackets = brackets.replace(b"{}", b"").replace(b"[]", b"")
    return not brackets


def _cut(buf: bytes, lo: int, hi: int) -> tuple[int, int] | None:
    """Where metadata.managedFields lies in the line buf[lo:hi] (from the comma before
    it to its closing bracket, end exclusive), if the bytes prove it (module docstring)."""
    head = _HEAD.match(buf, lo, hi)
    if head is None:
        return None
    meta = head.end()
    start = buf.find(KEY, meta, hi)
    if start < 0 or buf[start - 1] != 0x2C:  # a ',' before: not metadata's first key
        return None
    if head.group("k1") is not None:
        version, kind = head.group("v1", "k1")
    else:
        version, kind = head.group("v2", "k2")
    if (version, kind) not in TRUSTED_KINDS and not _balanced(buf[meta:start]):
        return None
    end = buf.find(b"]", start + len(KEY), hi)
    if end < 0 or _AFTER.match(buf, end, hi) is None:
        return None
    return start - 1, end + 1


def line_without_managed_fields(line: bytes) -> bytes:
    """The watch line with its object's metadata.managedFields cut out when that is
    provably safe (see the module docstring); otherwise the line as it is."""
    cut = _cut(line, 0, len(line))
    return line if cut is None else line[: cut[0]] + line[cut[1] :]


def decode_without_managed_fields(buf: bytes, start: int = 0, end: int | None = None) -> JSON:
    """One watch event (the line buf[start:end]) decoded, its object without
    metadata.managedFields."""
    hi = len(buf) if end is None else end
    view = memoryview(buf)
    cut = _cut(buf, start, hi)
    if cut is None:
        event = orjson.loads(view[start:hi])
    else:
        try:
            event = orjson.loads(b"".join((view[start : cut[0]], view[cut[1] : hi])))
        except orjson.JSONDecodeError:
            event = orjson.loads(view[start:hi])  # the cut was not the array's end
    if not isinstance(event, dict):
        raise ValueError(f"watch line is not an object: {buf[start : min(hi, start + 200)]!r}")
    obj = event.get("object")
    if isinstance(obj, dict):
        drop_managed_fields(obj)
    return event
