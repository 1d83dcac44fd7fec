"""One agent connection's snapshots that came off its socket and wait to be taken, in
order; when too many wait, the oldest are dropped.

Why a connection needs one: the receiver takes snapshots a few at a time (limits.py,
`parsing`), and a frame that waits for that turn must not stop the connection's
reading. aiohttp stops reading a socket whose frames nobody takes (its buffer is full),
and then misses the agent's answer to its heartbeat ping as well and closes the stream:
a replica that falls behind would end every agent's stream at once, and every agent
would come back (a TokenReview each) to a replica that could not keep up in the first
place. So the receiver reads every frame as it comes, into an `Inbox`, and takes them
from there. An agent's newer windows are worth more than its older ones: past
`max_waiting` snapshots, or `max_bytes` of them, the oldest go (the newest always
stays) and `put` says how many, for the receiver to count and tell the agent. An agent
that reports once a second never has more than one waiting unless the replica is
seconds behind.
"""

from __future__ import annotations

import asyncio
from collections import deque

from aviator.latency.schema import MAX_MESSAGE_BYTES

MAX_WAITING = 4  # snapshots: a few seconds of an agent's reports
MAX_WAITING_BYTES = MAX_MESSAGE_BYTES  # beyond the newest, whatever its size


class Inbox:
    """Frames of one connection waiting to be taken (`get`), oldest first."""

    __slots__ = ("_bytes", "_closed", "_frames", "_ready", "max_bytes", "max_waiting")

    def __init__(self, max_waiting: int = MAX_WAITING, max_bytes: int = MAX_WAITING_BYTES) -> None:
        if max_waiting < 1:
            raise ValueError("max_waiting must be >= 1")
        self.max_waiting = max_waiting
        self.max_bytes = max_bytes
        self._frames: deque[str | bytes] = deque()
        self._bytes = 0
        self._closed = False
        self._ready = asyncio.Event()

    def put(self, data: str | bytes) -> int:
        """Add the newest frame; returns how many older ones were dropped to make room."""
        frames = self._frames
        frames.append(data)
        self._bytes += len(data)
        dropped = 0
        while len(frames) > 1 and (len(frames) > self.max_waiting or self._bytes > self.max_bytes):
            self._bytes -= len(frames.popleft())
            dropped += 1
        self._ready.set()
        return dropped

    def close(self) -> None:
        """No more frames will come; `get` hands out those waiting, then None."""
        self._closed = True
        self._ready.set()

    async def get(self) -> str | bytes | None:
        """The oldest waiting frame, waiting for one; None once closed and empty."""
        while not self._frames:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        data = self._frames.popleft()
        self._bytes -= len(data)
        return data

    def __len__(self) -> int:
        return len(self._frames)
