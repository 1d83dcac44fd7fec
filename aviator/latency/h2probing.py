"""Probes of pods that speak HTTP/2 without TLS (h2c) or gRPC: the I/O around
`aviator.latency.h2c`.

A pod serving only h2c or gRPC cannot answer the HTTP/1.1 GET of `HttpProber`, so
the agent's keep-warm probes speak the protocol its eBPF program saw on the endpoint
(aviator.agent.prober). What a probe is, and how it is recorded, follows
`aviator.latency.probing` (timed from the request written on an open connection to
the first response HEADERS of its stream; a failure is a sample at the timeout,
counted as aborted):

- **h2**: `GET <probePath>` on a new stream;
- **grpc**: a unary call with an empty request message to `grpc_probe_path(probePath)`:
  probePath itself when it is a gRPC method path (`/package.Service/Method`), else the
  standard health check `/grpc.health.v1.Health/Check` (the empty message asks for
  the server's overall health). A probe succeeds on `:status` 200 with `grpc-status`
  0; h2 probes on a `:status` below 500.

A batch of probes of one target goes over one connection, one stream after another;
the connection is opened for the batch (its setup is not timed, but counts against the
first probe's timeout) and closed after it, or at the first failure (the next probe
of the batch dials again).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

from aviator.latency.h2c import Ended, H2cConnection, Reset, Response
from aviator.latency.probing import ProbeCounters, ProbeTarget

log = logging.getLogger(__name__)

GRPC_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
# A gRPC method path: "/" fully-qualified service "/" method (the gRPC HTTP/2 spec).
_GRPC_METHOD = re.compile(r"/[A-Za-z_][A-Za-z0-9_.]*/[A-Za-z_][A-Za-z0-9_]*")
_READ = 65536


# Stricter: what only a gRPC client would call, a dotted package.Service and a method in
# UpperCamelCase (the protobuf style guide's), e.g. /aviator.testapp.TestApp/Call: not a
# path an HTTP/1.1 app is likely to serve.
_GRPC_ONLY_METHOD = re.compile(r"/[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+/[A-Z]\w*")


def names_grpc_method(path: str) -> bool:
    """Whether a probePath can only mean a gRPC method (see _GRPC_ONLY_METHOD)."""
    return _GRPC_ONLY_METHOD.fullmatch(path) is not None


def grpc_probe_path(path: str) -> str:
    """The method a gRPC keep-warm probe calls for a policy's probePath."""
    return path if _GRPC_METHOD.fullmatch(path) else GRPC_HEALTH_CHECK


class _Link:
    """One open connection: the socket and the protocol state."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: H2cConnection
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = conn

    def send(self, data: bytes) -> None:
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


class _Batch:
    """The connection a batch's probes share (None until dialled, after a failure)."""

    def __init__(self) -> None:
        self.link: _Link | None = None

    def drop(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None


class H2Prober:
    """Sends h2c and gRPC probes; at most as many at once as `semaphore` allows."""

    def __init__(self, *, timeout_s: float, semaphore: asyncio.Semaphore, user_agent: str) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.timeout_s = timeout_s
        self.user_agent = user_agent
        self._sem = semaphore

    @property
    def timeout_us(self) -> int:
        return int(self.timeout_s * 1e6)

    async def probe_times(
        self, target: ProbeTarget, n: int, counters: ProbeCounters, *, grpc: bool
    ) -> int:
        """`n` probes of `target` one after another over one connection; returns how
        many failed."""
        path = grpc_probe_path(target.path) if grpc else target.path
        counters.protocol = "grpc" if grpc else "h2"
        failed = 0
        batch = _Batch()
        try:
            for _ in range(n):
                async with self._sem:
                    started = counters.begin()
                    latency_us: int | None = None
                    try:
                        latency_us = await asyncio.wait_for(
                            self._probe(batch, target, path, grpc, counters), self.timeout_s
                        )
                    except (OSError, TimeoutError, EOFError) as exc:
                        log.debug("probe %s%s failed: %r", target.url, path, exc)
                    finally:
                        counters.end(started, latency_us, self.timeout_us)
                if latency_us is None:
                    failed += 1
                    batch.drop()
        finally:
            batch.drop()
        return failed

    async def _probe(
        self,
        batch: _Batch,
        target: ProbeTarget,
        path: str,
        grpc: bool,
        counters: ProbeCounters,
    ) -> int | None:
        """One probe on the batch's connection (opened when there is none usable);
        its latency, None when it failed."""
        if batch.link is None or not batch.link.conn.usable:
            batch.drop()
            reader, writer = await asyncio.open_connection(target.ip, target.port)
            host = f"[{target.ip}]" if ":" in target.ip else target.ip
            conn = H2cConnection(f"{host}:{target.port}", self.user_agent)
            batch.link = _Link(reader, writer, conn)
            batch.link.send(conn.start())
        link = batch.link
        stream, request = link.conn.request(path, grpc=grpc)
        link.send(request)
        await link.writer.drain()
        sent = time.perf_counter()
        answered: float | None = None
        while not link.conn.closed:
            chunk = await link.reader.read(_READ)
            events = link.conn.receive(chunk) if chunk else link.conn.close("connection closed")
            link.send(link.conn.data_to_send())
            for event in events:
                if event.stream != stream:
                    continue
                if isinstance(event, Response):
                    answered = time.perf_counter()
                elif isinstance(event, Ended):
                    counters.statuses += 1
                    if grpc:
                        ok = event.status == 200 and event.grpc_status == 0
                    else:
                        ok = 0 < event.status < 500
                    counters.errors += int(not ok)
                    if not ok or answered is None:
                        log.debug("probe %s%s: %s", target.url, path, event)
                        return None
                    return max(0, int((answered - sent) * 1e6))
                elif isinstance(event, Reset):
                    log.debug("probe %s%s: %s", target.url, path, event.reason)
                    return None
        return None
