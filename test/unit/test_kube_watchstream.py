"""A watch body into events (aviator.kube.watchstream): however the body is cut into
chunks, the same events come out, in order; closing the events closes the body."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import orjson
from hypothesis import given
from hypothesis import strategies as st

from aviator.kube.watchstream import LineSplitter, watch_events

EVENTS = [
    {
        "type": "ADDED",
        "object": {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {"name": f"p{i}", "managedFields": [{"manager": "m"}]},
        },
    }
    for i in range(5)
]
BODY = b"".join(orjson.dumps(e) + b"\n" for e in EVENTS)


def chunked(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    return [body[a:b] for a, b in itertools.pairwise(points)]


@given(st.lists(st.integers(min_value=0), max_size=20))
def test_lines_are_the_same_however_the_body_is_chunked(cuts: list[int]) -> None:
    body = b"\n" + BODY.replace(b"\n", b"\n \n", 1)  # blank lines are skipped
    splitter = LineSplitter()
    lines = [buf[a:b] for chunk in chunked(body, cuts) for buf, a, b in splitter.feed(chunk)]
    assert [orjson.loads(x) for x in lines] == EVENTS


async def body(chunks: list[bytes], closed: list[bool]) -> AsyncIterator[bytes]:
    try:
        for chunk in chunks:
            yield chunk
        await asyncio.Event().wait()
    finally:
        closed.append(True)


async def test_events_are_decoded_in_order_with_or_without_managed_fields() -> None:
    for drop in (False, True):
        closed: list[bool] = []
        events = watch_events(body(chunked(BODY, [7, 300, 301]), closed), drop_managed_fields=drop)
        got = [await anext(events) for _ in EVENTS]
        names = [e["object"]["metadata"]["name"] for e in got]
        assert names == [f"p{i}" for i in range(5)]
        assert all(("managedFields" in e["object"]["metadata"]) is not drop for e in got)
        assert not closed
        await events.aclose()
        assert closed == [True]  # the body (the connection) is closed with them
