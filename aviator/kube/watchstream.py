"""A watch response body → watch events: lines split from chunks, then decoded.

The API server writes one JSON event (`{"type", "object"}`) per line; a chunk read
from the connection holds any number of lines and may end mid-line. `watch_events`
is the whole of that path for KubeClient.watch (and for benchmarks that replay
recorded bytes through it): each chunk is split once, and each line is decoded with
orjson, optionally without its object's metadata.managedFields
(aviator.kube.managedfields), or with msgspec into only the fields of a projection
(aviator.kube.projection).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Callable
from typing import cast

import orjson

from aviator.kube.managedfields import decode_without_managed_fields
from aviator.kube.objects import JSON
from aviator.kube.projection import Projection

Span = tuple[bytes, int, int]
"""One line as (buffer, start, end): buffer[start:end], not copied out of its chunk."""


class LineSplitter:
    """Whole lines out of chunks; a line cut by a chunk's end waits for the next."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, chunk: bytes) -> list[Span]:
        """The non-blank lines this chunk completes, without their newlines."""
        end = chunk.find(b"\n")
        if end < 0:
            self._partial += chunk
            return []
        spans: list[Span] = []
        start = 0
        if self._partial:
            first = self._partial + chunk[:end]
            spans.append((first, 0, len(first)))
            start, end = end + 1, chunk.find(b"\n", end + 1)
        while end >= 0:
            spans.append((chunk, start, end))
            start, end = end + 1, chunk.find(b"\n", end + 1)
        self._partial = chunk[start:]
        return [span for span in spans if not _blank(*span)]


def _blank(buf: bytes, start: int, end: int) -> bool:
    # Event lines start with "{"; only others are looked at for being all whitespace.
    return end == start or (buf[start] != 0x7B and not buf[start:end].strip())


def decode_event(buf: bytes, start: int = 0, end: int | None = None) -> JSON:
    """One watch event (buf[start:end]), decoded whole."""
    return cast(JSON, orjson.loads(memoryview(buf)[start:end]))


def event_decoder(
    drop_managed_fields: bool, projection: Projection | None = None
) -> Callable[[bytes, int, int], JSON]:
    if projection is not None:
        return projection.decode_event
    return decode_without_managed_fields if drop_managed_fields else decode_event


async def watch_events(
    chunks: AsyncIterable[bytes],
    *,
    drop_managed_fields: bool = False,
    projection: Projection | None = None,
) -> AsyncGenerator[JSON, None]:
    """The events of a watch body read as `chunks`, in order."""
    splitter = LineSplitter()
    decode = event_decoder(drop_managed_fields, projection)
    try:
        async for chunk in chunks:
            for buf, start, end in splitter.feed(chunk):
                yield decode(buf, start, end)
    finally:
        # Closing these events closes the body (and so the connection) now, not
        # whenever the body's generator is collected.
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
