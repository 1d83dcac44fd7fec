"""Decoding only the fields a cache's readers use: a projection of one kind's objects.

A Pod as the API server sends it is mostly what nothing of ours reads (containers'
images, env, resources and probes, volumes, tolerations, containerStatuses): at
thousands of pod updates per second, decoding all of it, and then freeing it, is most
of an informer's cost, and holding it most of a controller's memory. A `Projection`
names the fields to keep as nested TypedDicts (`schema`) and decodes watch lines with
msgspec straight into plain dicts holding only those: undeclared fields are skipped
in the bytes, never made into objects. The result is the same `dict[str, Any]` every
reader already takes, so nothing downstream changes.

Contract:

- `decode_event(buf, start, end)` is a watch line's event with its object projected.
  An ERROR event (its object a Status), and an event whose object does not fit the
  schema (a field of an unexpected type), is decoded whole instead (orjson), without
  managedFields: a projection never loses an event, and the reader sees the server's
  own words. A line that is not JSON raises orjson's error, as an unprojected watch
  does.
- `project(obj)` projects an already decoded object (list responses, decoded whole):
  listed and watched objects of one cache look alike. An object that does not fit is
  returned unchanged.
- A field a schema does not declare is absent from every object decoded through it,
  as if the server had not set it. A projection is therefore only as right as its
  schema: each schema lists its readers, and tests check that each reader answers the
  same on a projected object as on the whole one
  (test/unit/test_kube_podfields.py).
- `decode_list(raw)` is a list response with its items projected, decoded straight
  into the schema's fields (a list of the cluster's pods is never held whole); a list
  holding an item that does not fit is decoded whole and each item projected, or
  (not fitting) kept whole without managedFields.

An informer takes a projection per cache (`SharedIndexInformer(projection=...)`); the
Pod one the controller uses is `aviator.kube.podfields.CONTROLLER_POD`.
"""

from __future__ import annotations

from typing import Any, cast

import msgspec
import orjson

from aviator.kube.managedfields import decode_without_managed_fields, drop_managed_fields
from aviator.kube.objects import JSON


class Projection:
    """Decode objects of one kind keeping only the fields of `schema` (a TypedDict)."""

    def __init__(self, name: str, schema: type[Any]) -> None:
        self.name = name
        self.schema = schema
        event = msgspec.defstruct("WatchEvent", [("type", str), ("object", schema)])
        self._events = msgspec.json.Decoder(event)
        items: Any = list[schema]  # type: ignore[valid-type]
        listing = msgspec.defstruct(
            "List", [("metadata", dict[str, Any], {}), ("items", items, [])]
        )
        self._lists = msgspec.json.Decoder(listing)

    def __repr__(self) -> str:
        return f"Projection({self.name})"

    def decode_event(self, buf: bytes, start: int = 0, end: int | None = None) -> JSON:
        """One watch event (buf[start:end]) with its object projected (see the module)."""
        try:
            event: Any = self._events.decode(memoryview(buf)[start:end])
        except msgspec.DecodeError:  # a type it does not fit, or not JSON: orjson says
            return decode_without_managed_fields(buf, start, end)
        if event.type == "ERROR":  # a Status, whatever the schema: its code, its words
            return decode_without_managed_fields(buf, start, end)
        return {"type": event.type, "object": event.object}

    def decode_list(self, raw: bytes) -> JSON:
        """A list response (its `metadata` and `items`) with every item projected. The
        items are decoded straight into the schema's fields, so a list of 50,000 pods is
        never held whole as Python objects (decoded whole, then projected, it took a
        controller a gigabyte it kept); a list with an item that does not fit is decoded
        whole and each item projected (`project`). Not JSON: orjson's error."""
        try:
            listing: Any = self._lists.decode(raw)
        except msgspec.DecodeError:
            whole = orjson.loads(raw)
            if not isinstance(whole, dict):
                return {}
            whole["items"] = [self._listed(item) for item in whole.get("items") or []]
            return cast(JSON, whole)
        return {"metadata": listing.metadata, "items": listing.items}

    def _listed(self, item: JSON) -> JSON:
        """A listed item decoded whole: projected, or (it does not fit) without
        managedFields, as a watch event that does not fit is decoded."""
        projected = self.project(item)
        if projected is item:
            drop_managed_fields(item)
        return projected

    def project(self, obj: JSON) -> JSON:
        """`obj` (decoded whole) with only the schema's fields; unchanged if it does not
        fit the schema."""
        try:
            return cast(JSON, msgspec.convert(obj, self.schema))
        except msgspec.ValidationError:
            return obj
