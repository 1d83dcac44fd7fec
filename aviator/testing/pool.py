"""An HTTP/1.1 keep-alive connection pool that behaves like real clients' pools.

Tests and benchmarks of connection hand-off need a client that does what urllib3's
pools and Go's http.Transport do, neither more nor less:

- connections are kept and reused (most recently returned first), never closed by the
  client; at most `size` exist, a request waits for one when all are busy, and waiting
  requests are handed connections in the order they began to wait (Go's Transport);
- a connection the server closed while it sat idle is found out when it is next used:
  a request on a *reused* connection that fails before any response byte arrived is
  retried once on a fresh connection (idempotent requests only; this client sends
  GETs), as both do (Go: "server closed idle connection"; urllib3: a dropped
  connection is replaced). A failure on a fresh connection, or after response bytes,
  is a failure;
- a fresh connection is dialled through `address()` each time, so a Service proxy
  balances it anew (kube-proxy picks a pod per connection).

`run(rate, seconds)` sends open-loop load (Poisson arrivals, seeded); latency counts
from when a request was due, so waiting for a connection is not hidden. Every request
issued is listed by its due time (`issued`), answered or not yet, and every sample
names the connection that answered it (`connection`, numbered in dial order; `dialed`
gives when each was dialled), so a test can tell a connection kept from before an
event from one dialled after it, and wait for every request of a window to be answered.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class PoolSample:
    """One request: when it was due (monotonic), its latency from then, who served it,
    whether it was retried on a fresh connection, the error if it failed, the
    connection it was last sent on (0: none), and whether it had to wait in line for
    one (every connection the pool may hold was busy)."""

    at: float
    latency_s: float
    ok: bool
    served_by: str | None
    retried: bool = False
    error: str | None = None
    connection: int = 0
    queued: bool = False


@dataclass(eq=False)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    number: int
    served_by: str | None = None
    used: int = 0


class _NoResponse(Exception):
    """The connection failed before any response byte (retryable on a reused one)."""


@dataclass
class KeepAlivePool:
    address: Callable[[], tuple[str, int]]
    size: int = 16
    timeout_s: float = 5.0
    path: str = "/"
    samples: list[PoolSample] = field(default_factory=list)
    issued: list[float] = field(default_factory=list)  # due times, in issue order
    dialed: dict[int, float] = field(default_factory=dict)  # connection → when (monotonic)
    opened: int = 0
    retries: int = 0
    _idle: list[_Conn] = field(default_factory=list)
    _open: int = 0
    _waiting: deque[asyncio.Future[_Conn | None]] = field(default_factory=deque)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(
        self,
        rate_per_s: float,
        duration_s: float,
        seed: int = 1,
        stop: asyncio.Event | None = None,
    ) -> list[PoolSample]:
        """Open-loop load for `duration_s` (or until `stop` is set, if sooner), then wait
        for the answers; this run's samples."""
        rng = random.Random(seed)
        first = len(self.samples)
        due = time.monotonic()
        end = due + duration_s
        while stop is None or not stop.is_set():
            due += rng.expovariate(rate_per_s)
            if due >= end:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.get_running_loop().create_task(self._timed(due))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        return self.samples[first:]

    async def request(self) -> PoolSample:
        """One GET now (its sample is also kept in `samples`)."""
        await self._timed(time.monotonic())
        return self.samples[-1]

    async def close(self) -> None:
        for conn in self._idle:
            conn.writer.close()
        self._idle.clear()

    @property
    def connections(self) -> int:
        return self._open

    async def _timed(self, due: float) -> None:
        self.issued.append(due)
        retried = False
        served: str | None = None
        number = 0
        queued = not self._idle and self._open >= self.size
        try:
            async with asyncio.timeout(max(0.0, self.timeout_s - (time.monotonic() - due))):
                conn, reused = await self._acquire()
                served, number = conn.served_by, conn.number
                try:
                    status, served = await self._exchange(conn)
                except _NoResponse:
                    self._discard(conn)
                    if not reused:
                        raise
                    retried = True
                    self.retries += 1
                    conn = await self._dial()
                    number = conn.number
                    try:
                        status, served = await self._exchange(conn)
                    except BaseException:  # (the handler below does not see this one's)
                        self._discard(conn)
                        raise
                except BaseException:
                    self._discard(conn)
                    raise
            self._release(conn)
            ok = status == 200
            self.samples.append(
                PoolSample(
                    due,
                    time.monotonic() - due,
                    ok,
                    served,
                    retried,
                    None if ok else f"status {status}",
                    number,
                    queued,
                )
            )
        except (OSError, TimeoutError, ValueError, _NoResponse, asyncio.IncompleteReadError) as err:
            name = (
                type(err.__cause__ or err).__name__
                if isinstance(err, _NoResponse)
                else type(err).__name__
            )
            self.samples.append(
                PoolSample(
                    due, time.monotonic() - due, False, served, retried, name, number, queued
                )
            )

    async def _acquire(self) -> tuple[_Conn, bool]:
        while True:
            if self._idle:
                return self._idle.pop(), True
            if self._open < self.size:
                return await self._dial(), False
            # All busy: wait in line for the next connection returned (or a slot freed
            # by one closed), handed to the longest waiting first, as Go's Transport
            # does; one that gives up as it is handed a connection passes it on.
            turn: asyncio.Future[_Conn | None] = asyncio.get_running_loop().create_future()
            self._waiting.append(turn)
            try:
                conn = await turn
            except BaseException:
                if turn.done() and not turn.cancelled():
                    handed = turn.result()
                    if handed is None:
                        self._pass_turn()
                    else:
                        self._release(handed, count=False)
                raise
            finally:
                if turn in self._waiting:
                    self._waiting.remove(turn)
            if conn is not None:
                return conn, True

    async def _dial(self) -> _Conn:
        self._open += 1
        try:
            host, port = self.address()
            reader, writer = await asyncio.open_connection(host, port)
        except BaseException:
            self._open -= 1
            self._pass_turn()
            raise
        self.opened += 1
        self.dialed[self.opened] = time.monotonic()
        return _Conn(reader, writer, self.opened)

    def _release(self, conn: _Conn, count: bool = True) -> None:
        if count:
            conn.used += 1
        if not self._hand(conn):
            self._idle.append(conn)

    def _discard(self, conn: _Conn) -> None:
        conn.writer.close()
        self._open -= 1
        self._pass_turn()

    def _pass_turn(self) -> None:
        """A slot is free: the longest waiting may dial."""
        self._hand(None)

    def _hand(self, conn: _Conn | None) -> bool:
        """Give the longest waiting request `conn` (None: a slot to dial in); whether
        one was waiting."""
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(conn)
                return True
        return False

    async def _exchange(self, conn: _Conn) -> tuple[int, str | None]:
        try:
            conn.writer.write(f"GET {self.path} HTTP/1.1\r\nHost: pool\r\n\r\n".encode())
            await conn.writer.drain()
            first = await conn.reader.read(1)
        except (ConnectionError, OSError) as err:
            raise _NoResponse() from err
        if not first:
            raise _NoResponse()
        head = first + await conn.reader.readuntil(b"\r\n\r\n")
        status, length, served_by = parse_response_head(head)
        conn.served_by = served_by or conn.served_by
        if length:
            await conn.reader.readexactly(length)
        return status, conn.served_by


def parse_response_head(head: bytes) -> tuple[int, int, str | None]:
    """(status, Content-Length, X-Served-By) of an HTTP/1.1 response head; status 0
    when the status line is unreadable."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
    length = 0
    served_by: str | None = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        if key == "content-length":
            length = int(value.strip())
        elif key == "x-served-by":
            served_by = value.strip()
    return status, length, served_by
