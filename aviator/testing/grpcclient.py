"""A gRPC client on grpcio's asyncio channel: N concurrent unary RPCs on one channel
(one HTTP/2 connection to one address), each timed from the call to its response
headers, with its status code.

The method is called with bytes in and bytes out (no generated code), e.g. the test
app's `/aviator.testapp.TestApp/Call`. The time of a call is from just before the
call is made to when its initial metadata (the first response HEADERS, or the
trailers-only response of an error) is available to the caller: the agent's
definition of a gRPC request seen from the client, plus grpcio's own overhead in
this process (tens to hundreds of µs; `aviator.testing.h2client` with `grpc=True`
times the frames themselves).

`run(streams, requests, duration_s)` keeps `streams` RPCs in flight until `requests`
were made or `duration_s` passed. `run_with_new_channels` is the other common client:
workers that open a new channel every few RPCs, so a Service proxy (which places
connections, not RPCs) spreads them. `Channels` is the long-lived kind: a fixed set of
channels kept for the client's life, open-loop RPCs spread over them; grpcio re-dials
a channel whose connection closed (pick_first goes idle and connects again on the next
RPC), so which pod serves a channel changes only when its connection ends.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

CALL = "/aviator.testapp.TestApp/Call"


@dataclass(frozen=True, slots=True)
class RpcSample:
    """One RPC: when it was made (monotonic ns), the time to its response headers
    (None when none came), its status code name ("OK", "UNAVAILABLE", ...), who
    served it (the `x-served-by` trailer) and the status details of a failed one."""

    sent_ns: int
    latency_s: float | None
    code: str
    served_by: str | None = None
    details: str | None = None

    @property
    def ok(self) -> bool:
        return self.code == "OK"


@dataclass
class GrpcClient:
    """One channel to `target` ("host:port"); `samples` holds every RPC's sample."""

    target: str
    method: str = CALL
    timeout_s: float = 10.0
    samples: list[RpcSample] = field(default_factory=list)
    _channel: Any = None

    async def connect(self) -> None:
        # A subchannel pool of its own: two clients in one process never share a
        # connection, so "one client, one connection" holds.
        self._channel = grpc.aio.insecure_channel(
            self.target, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        await asyncio.wait_for(self._channel.channel_ready(), self.timeout_s)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> GrpcClient:
        await self.connect()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def call(self, request: bytes = b"{}", due_ns: int | None = None) -> RpcSample:
        """One RPC now, timed from `due_ns` (monotonic) when given (open-loop load
        counts the wait for the event loop as the client's), else from now."""
        assert self._channel is not None, "not connected"
        stub = self._channel.unary_unary(self.method)
        sent = time.monotonic_ns() if due_ns is None else due_ns
        call = stub(request, timeout=self.timeout_s)
        latency: float | None = None
        try:
            await call.initial_metadata()
            latency = (time.monotonic_ns() - sent) / 1e9
            await call
        except grpc.aio.AioRpcError:
            pass  # its code is the sample's
        code = await call.code()
        details = None if code == grpc.StatusCode.OK else await call.details()
        served_by = None
        for key, value in await call.trailing_metadata() or ():
            if key == "x-served-by":
                served_by = value
        sample = RpcSample(sent, latency, code.name, served_by, details)
        self.samples.append(sample)
        return sample

    async def run(self, streams: int, requests: int, duration_s: float) -> list[RpcSample]:
        """`streams` RPCs in flight until `requests` were made or `duration_s` passed."""
        first = len(self.samples)
        deadline = time.monotonic() + duration_s
        budget = [requests]

        async def worker() -> None:
            while budget[0] > 0 and time.monotonic() < deadline:
                budget[0] -= 1
                await self.call()

        await asyncio.gather(*(worker() for _ in range(max(1, streams))))
        return self.samples[first:]


async def run_with_new_channels(
    target: str,
    workers: int,
    rpcs_per_channel: int,
    requests: int,
    duration_s: float,
    *,
    method: str = CALL,
    timeout_s: float = 10.0,
) -> list[RpcSample]:
    """`workers` clients, one RPC at a time each, every one opening a new channel (a new
    connection, so a Service proxy places it anew) every `rpcs_per_channel` RPCs; until
    `requests` were made or `duration_s` passed (each channel reserves its RPCs when it
    opens, so `requests / rpcs_per_channel` channels, rounded up). A channel that cannot
    connect within `timeout_s` is one UNAVAILABLE sample without a latency, and its
    reserved RPCs are not made."""
    deadline = time.monotonic() + duration_s
    budget = [requests]
    samples: list[RpcSample] = []

    def reserve() -> int:
        """The next channel's share of the budget (0: done)."""
        if budget[0] <= 0 or time.monotonic() >= deadline:
            return 0
        share = min(rpcs_per_channel, budget[0])
        budget[0] -= share
        return share

    async def worker() -> None:
        while share := reserve():
            client = GrpcClient(target, method, timeout_s, samples)
            try:
                await client.connect()
            except TimeoutError:
                samples.append(RpcSample(time.monotonic_ns(), None, "UNAVAILABLE"))
                await client.close()
                continue
            try:
                for _ in range(share):
                    if time.monotonic() >= deadline:
                        break
                    await client.call()
            finally:
                await client.close()

    await asyncio.gather(*(worker() for _ in range(max(1, workers))))
    return samples


@dataclass
class Channels:
    """`count` long-lived channels to `target`, each one connection (pick_first, a
    subchannel pool of its own); open-loop RPCs go to them in turn. `samples[i]` are
    channel i's RPCs, in the order they finished."""

    target: str
    count: int
    method: str = CALL
    timeout_s: float = 10.0
    clients: list[GrpcClient] = field(default_factory=list)
    _tasks: set[asyncio.Task[RpcSample]] = field(default_factory=set)

    async def connect(self) -> None:
        self.clients = [
            GrpcClient(self.target, self.method, self.timeout_s) for _ in range(self.count)
        ]
        await asyncio.gather(*(c.connect() for c in self.clients))

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients))

    @property
    def samples(self) -> list[list[RpcSample]]:
        return [c.samples for c in self.clients]

    async def run(
        self, rate_per_s: float, duration_s: float, seed: int = 1
    ) -> list[tuple[int, RpcSample]]:
        """Poisson arrivals at `rate_per_s` for `duration_s`, round-robin over the
        channels, then wait for the answers; this run's RPCs as (channel, sample)."""
        assert self.clients, "not connected"
        rng = random.Random(seed)
        first = [len(c.samples) for c in self.clients]
        due = time.monotonic()
        end = due + duration_s
        turn = 0
        while True:
            due += rng.expovariate(rate_per_s)
            if due >= end:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            client = self.clients[turn % len(self.clients)]
            turn += 1
            task = asyncio.get_running_loop().create_task(client.call(due_ns=int(due * 1e9)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        return [(i, s) for i, c in enumerate(self.clients) for s in c.samples[first[i] :]]
