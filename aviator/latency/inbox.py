"""One agent connection's snapshots that came off its socket and wait to be taken, in
order; when too many wait, the oldest are dropped.

Why a connection needs one: the receiver takes snapshots a few at a time (limits.py,
`parsing`), and a frame that waits for that turn must not stop the connection's
reading for long. aiohttp stops reading a socket whose frames nobody takes (its buffer
is full), and then misses the answer to its heartbeat ping as well (and the agent's own
pings go unanswered) and the stream is closed: a replica that falls behind would end
every agent's stream at once, and every agent would come back (a TokenReview each) to
a replica that could not keep up in the first place.

So the receiver reads frames into an `Inbox` and takes them from there. While the
replica keeps up, a full inbox (`max_waiting` frames, or `max_bytes` of them) makes
the reader wait for room (`room`), and a reader that waits never has a frame dropped:
the socket's own backpressure, and an agent whose sends block drops its
own oldest snapshots (agent/stream.py), having sent nothing in vain. A reader that
waited its `patience` in vain (a turn that long means the replica is far behind) reads
on whatever comes until the next frame is taken, so pings and pongs get through, and
`put` makes room by dropping the oldest (the newest always stays; also past
`max_bytes` besides it), saying how many, for the receiver to count and tell the agent: an
agent's newer windows are worth more than its older ones.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from aiohttp import WSMsgType, web

from aviator.latency.schema import MAX_MESSAGE_BYTES

MAX_WAITING = 4  # snapshots: a few seconds of an agent's reports
MAX_WAITING_BYTES = MAX_MESSAGE_BYTES  # besides the newest, whatever its size


class Inbox:
    """Frames of one connection waiting to be taken (`get`), oldest first."""

    __slots__ = (
        "_bytes",
        "_closed",
        "_frames",
        "_ready",
        "_taken",
        "max_bytes",
        "max_waiting",
        "taken",
    )

    def __init__(self, max_waiting: int = MAX_WAITING, max_bytes: int = MAX_WAITING_BYTES) -> None:
        if max_waiting < 1:
            raise ValueError("max_waiting must be >= 1")
        self.max_waiting = max_waiting
        self.max_bytes = max_bytes
        self._frames: deque[str | bytes] = deque()
        self._bytes = 0
        self._closed = False
        self._ready = asyncio.Event()
        self._taken = asyncio.Event()
        self.taken = 0  # frames handed out by `get` so far

    def put(self, data: str | bytes) -> int:
        """Add the newest frame; returns how many older ones were dropped to make room."""
        frames = self._frames
        frames.append(data)
        self._bytes += len(data)
        dropped = 0
        newest = len(data)
        while len(frames) > 1 and (
            len(frames) > self.max_waiting or self._bytes - newest > self.max_bytes
        ):
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
        self.taken += 1
        self._taken.set()
        return data

    def full(self) -> bool:
        """Whether one more frame could make `put` drop one: a reader that waits for
        room while this holds never has a frame dropped."""
        frames = self._frames
        return len(frames) >= self.max_waiting or (bool(frames) and self._bytes >= self.max_bytes)

    async def room(self, patience_s: float) -> bool:
        """Wait until the inbox is not full, at most `patience_s`; whether it is not."""
        try:
            async with asyncio.timeout(patience_s):
                while self.full():
                    self._taken.clear()
                    await self._taken.wait()
        except TimeoutError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._frames)


async def read_frames(
    ws: web.WebSocketResponse,
    inbox: Inbox,
    patience_s: float,
    dropped: Callable[[int], None],
) -> None:
    """The text and binary frames of `ws` into `inbox` until the connection ends (then
    the inbox is closed): waiting for room while it is full, up to `patience_s`, then
    reading on until a frame is taken (the module docstring says why); `dropped` hears
    how many older frames each `put` dropped."""
    behind: int | None = None  # waited in vain, when `inbox.taken` was this
    try:
        async for msg in ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                break  # ERROR; close frames end the iteration by themselves
            n = inbox.put(msg.data)
            if n:
                dropped(n)
            if behind is not None and inbox.taken != behind:
                behind = None  # a frame was taken since: the replica moves again
            if behind is None and inbox.full() and not await inbox.room(patience_s):
                behind = inbox.taken
    finally:
        inbox.close()
