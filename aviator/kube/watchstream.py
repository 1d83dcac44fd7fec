"""A watch response body → watch events: lines split from chunks, then decoded.

The API server writes one JSON event (`{"type", "object"}`) per line; a chunk read
from the connection holds any number of lines and may end mid-line. `watch_events`
is the whole of that path for KubeClient.watch (and for benchmarks that replay
recorded bytes through it): each chunk is split once, and each line is decoded with
orjson, optionally without its object's metadata.managedFields
(aviator.kube.managedfields).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Callable
from typing import cast

import orjson

from aviator.kube.managedfields import decode_without_managed_fields
from aviator.kube.objects import JSON


class LineSplitter:
    """Whole lines out of chunks; a line cut by a chunk's end waits for the next."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The non-blank lines this chunk completes, without their newlines."""
        if b"\n" not in chunk:
            self._partial += chunk
            return []
        lines = chunk.split(b"\n")
        if self._partial:
            lines[0] = self._partial + lines[0]
        self._partial = lines.pop()
        return [line for line in lines if line.strip()]


def decode_event(line: bytes) -> JSON:
    """One watch event, decoded whole."""
    return cast(JSON, orjson.loads(line))


def event_decoder(drop_managed_fields: bool) -> Callable[[bytes], JSON]:
    return decode_without_managed_fields if drop_managed_fields else decode_event


async def watch_events(
    chunks: AsyncIterable[bytes], *, drop_managed_fields: bool = False
) -> AsyncGenerator[JSON, None]:
    """The events of a watch body read as `chunks`, in order."""
    splitter = LineSplitter()
    decode = event_decoder(drop_managed_fields)
    try:
        async for chunk in chunks:
            for line in splitter.feed(chunk):
                yield decode(line)
    finally:
        # Closing these events closes the body (and so the connection) now, not
        # whenever the body's generator is collected.
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
