"""Projections (aviator.kube.projection): a watch line decodes into the declared fields
only; anything that does not fit is decoded whole, never lost; listed and watched
objects come out alike."""

from __future__ import annotations

from typing import Any, TypedDict

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aviator.kube.projection import Projection
from aviator.kube.watchstream import watch_events


class Meta(TypedDict, total=False):
    name: str
    labels: dict[str, str]


class Thing(TypedDict, total=False):
    kind: str
    metadata: Meta
    count: int


THING = Projection("thing", Thing)

WHOLE = {
    "kind": "Thing",
    "metadata": {
        "name": "a",
        "labels": {"app": "x"},
        "managedFields": [{"manager": "m", "fieldsV1": {"f:count": {}}}],
        "annotations": {"big": "y" * 100},
    },
    "count": 3,
    "spec": {"containers": [{"image": "i", "env": [{"name": "E", "value": "v"}]}]},
}
KEPT = {"kind": "Thing", "metadata": {"name": "a", "labels": {"app": "x"}}, "count": 3}


def line(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def test_a_watch_line_decodes_into_the_declared_fields_only() -> None:
    event = THING.decode_event(line({"type": "MODIFIED", "object": WHOLE}))
    assert event == {"type": "MODIFIED", "object": KEPT}
    assert type(event["object"]) is dict  # what every cache reader takes


def test_a_line_inside_a_buffer() -> None:
    body = b"xx" + line({"type": "ADDED", "object": WHOLE}) + b"\nyy"
    assert THING.decode_event(body, 2, body.index(b"\n")) == {"type": "ADDED", "object": KEPT}


def test_an_object_that_does_not_fit_is_decoded_whole_without_managed_fields() -> None:
    status = {"kind": "Status", "status": "Failure", "code": 410, "metadata": {}}
    assert THING.decode_event(line({"type": "ERROR", "object": status})) == {
        "type": "ERROR",
        "object": status,
    }
    odd = {**WHOLE, "count": "three"}  # a declared field of another type
    decoded = THING.decode_event(line({"type": "MODIFIED", "object": odd}))["object"]
    assert decoded["count"] == "three" and decoded["spec"] == WHOLE["spec"]
    assert "managedFields" not in decoded["metadata"]


def test_a_line_that_is_not_json_fails_as_an_unprojected_watch_does() -> None:
    with pytest.raises(orjson.JSONDecodeError):
        THING.decode_event(b'{"type":"ADDED","object":{"kind":')


def test_a_bookmark_keeps_its_version() -> None:
    class Versioned(TypedDict, total=False):
        metadata: dict[str, Any]

    bookmark = {
        "type": "BOOKMARK",
        "object": {"kind": "Thing", "metadata": {"resourceVersion": "7"}},
    }
    decoded = Projection("versioned", Versioned).decode_event(line(bookmark))
    assert decoded["object"]["metadata"]["resourceVersion"] == "7"


def test_project_gives_a_listed_object_what_a_watch_gives() -> None:
    assert THING.project(orjson.loads(orjson.dumps(WHOLE))) == KEPT
    odd = {**WHOLE, "count": "three"}
    assert THING.project(odd) is odd


def test_a_list_decodes_its_items_into_the_declared_fields_only() -> None:
    listing = {
        "kind": "ThingList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "42", "continue": "c"},
        "items": [WHOLE, {**WHOLE, "count": 4}],
    }
    decoded = THING.decode_list(orjson.dumps(listing))
    assert decoded == {
        "metadata": {"resourceVersion": "42", "continue": "c"},
        "items": [KEPT, {**KEPT, "count": 4}],
    }
    assert all(type(item) is dict for item in decoded["items"])
    assert THING.decode_list(b'{"metadata": {"resourceVersion": "1"}}')["items"] == []


def test_a_list_with_an_item_that_does_not_fit_loses_no_item() -> None:
    odd = {**WHOLE, "count": "three"}
    listing = {"metadata": {"resourceVersion": "42"}, "items": [WHOLE, odd]}
    decoded = THING.decode_list(orjson.dumps(listing))
    fits, whole = decoded["items"]
    assert fits == KEPT and decoded["metadata"] == {"resourceVersion": "42"}
    assert whole["count"] == "three" and whole["spec"] == WHOLE["spec"]
    assert "managedFields" not in whole["metadata"]
    with pytest.raises(orjson.JSONDecodeError):
        THING.decode_list(b'{"items": [')


async def test_watch_events_decode_through_the_projection() -> None:
    async def chunks() -> Any:
        body = b"\n".join(
            line({"type": "ADDED", "object": {**WHOLE, "count": n}}) for n in range(3)
        )
        for i in range(0, len(body), 50):
            yield body[i : i + 50]
        yield b"\n"

    got = [e async for e in watch_events(chunks(), projection=THING)]
    assert [e["object"] for e in got] == [{**KEPT, "count": n} for n in range(3)]


_text = st.text(max_size=8)
_int = st.integers(-(2**63), 2**63 - 1)  # what JSON from an API server holds
_objects = st.fixed_dictionaries(
    {"kind": _text},
    optional={
        "metadata": st.fixed_dictionaries(
            {},
            optional={
                "name": _text,
                "labels": st.dictionaries(_text, _text, max_size=3),
                "managedFields": st.lists(st.dictionaries(_text, _text), max_size=2),
                "other": st.recursive(
                    st.none() | st.booleans() | _int | _text,
                    lambda inner: (
                        st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3)
                    ),
                    max_leaves=8,
                ),
            },
        ),
        "count": _int,
        "spec": st.dictionaries(_text, _int | _text, max_size=3),
    },
)


@given(_objects)
def test_watched_and_listed_objects_are_alike(obj: dict[str, Any]) -> None:
    watched = THING.decode_event(line({"type": "MODIFIED", "object": obj}))["object"]
    assert watched == THING.project(orjson.loads(orjson.dumps(obj)))
    assert set(watched) <= set(Thing.__annotations__)
    assert set(watched.get("metadata") or {}) <= set(Meta.__annotations__)
